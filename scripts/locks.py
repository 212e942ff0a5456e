"""`make lock` and `make lock-check`: the lock files, compiled from the requirements with uv.

Three layers, each compiled with the lock below it as a constraint, so that a package has
one version in all three and production's set is resolved for the runtime alone (a test
tool can never move it):

    requirements.txt      -> requirements.lock      production: the runtime
    requirements-run.txt  -> requirements-run.lock  `make run`: + honcho, local servers, uv
    requirements-dev.txt  -> requirements-dev.lock  `make test` and the tools

Every pin, transitive ones included, carries the hashes of all its files on the index, and
the resolution is for CPython 3.11 on x86-64 Linux (what CI and production run). `check`
proves both halves of "the lock is the install": recompiling changes nothing, and a fresh
venv synced from each lock holds exactly its pins, consistent (`uv pip check`).
"""

from __future__ import annotations

import argparse
import difflib
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# (input, lock, the lower layer's lock it is constrained by)
LAYERS = (
    ("requirements.txt", "requirements.lock", None),
    ("requirements-run.txt", "requirements-run.lock", "requirements.lock"),
    ("requirements-dev.txt", "requirements-dev.lock", "requirements-run.lock"),
)
TARGET = ("--python-version", "3.11", "--python-platform", "x86_64-unknown-linux-gnu")
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(text: str) -> dict[str, str]:
    """Name -> version of every `name==version` line (a lock, or `uv pip freeze`)."""
    found = (PIN.match(line) for line in text.splitlines())
    return {normalize(m[1]): m[2] for m in found if m}


def compile_locks(uv: str, where: Path, upgrade: Sequence[str] = ()) -> None:
    """Recompile every lock in ``where`` from its input, bottom layer first. Without
    ``upgrade`` uv keeps each existing pin the inputs still allow."""
    for source, lock, constraint in LAYERS:
        command = [uv, "pip", "compile", source, "--output-file", lock, "--quiet",
                   "--generate-hashes", *TARGET, "--custom-compile-command", "make lock",
                   *upgrade]  # fmt: skip
        if constraint:
            command += ["--constraint", constraint]
        subprocess.run(command, cwd=where, check=True)


def stale_locks(uv: str) -> list[str]:
    """Recompile a copy of the inputs and locks; return the diff of each lock that changes."""
    diffs = []
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp)
        for name in {name for layer in LAYERS for name in layer if name}:
            shutil.copy(ROOT / name, copy / name)
        compile_locks(uv, copy)
        for _, lock, _ in LAYERS:
            before = (ROOT / lock).read_text().splitlines(keepends=True)
            after = (copy / lock).read_text().splitlines(keepends=True)
            diffs.append("".join(difflib.unified_diff(before, after, lock, f"{lock} (recompiled)")))
    return [diff for diff in diffs if diff]


def install_mismatch(uv: str, lock: str) -> list[str]:
    """Sync a fresh venv from ``lock`` (hashes required); return how it differs from the lock."""
    with tempfile.TemporaryDirectory() as tmp:
        venv = Path(tmp) / "venv"
        python = str(venv / "bin" / "python")
        subprocess.run([uv, "venv", "--quiet", "--python", sys.executable, str(venv)], check=True)
        subprocess.run([uv, "pip", "sync", "--quiet", "--python", python, "--require-hashes",
                        str(ROOT / lock)], check=True)  # fmt: skip
        consistent = subprocess.run([uv, "pip", "check", "--python", python],
                                    capture_output=True, text=True, check=False)  # fmt: skip
        frozen = subprocess.run([uv, "pip", "freeze", "--python", python],
                                capture_output=True, text=True, check=True)  # fmt: skip
    wanted, installed = pins((ROOT / lock).read_text()), pins(frozen.stdout)
    problems = [f"{name}=={version} locked, not installed"
                for name, version in wanted.items() if installed.get(name) != version]  # fmt: skip
    problems += [f"{name}=={version} installed, not locked"
                 for name, version in installed.items() if wanted.get(name) != version]  # fmt: skip
    if consistent.returncode != 0:
        problems.append(f"uv pip check: {(consistent.stdout or consistent.stderr).strip()}")
    return problems


def check(uv: str) -> int:
    failed = False
    diffs = stale_locks(uv)
    for diff in diffs:
        print(diff, end="")
    if diffs:
        print("lock-check: the lock files are not what requirements*.txt compile to: "
              "run `make lock` and commit them")  # fmt: skip
        failed = True
    else:
        print("lock-check: the lock files are what requirements*.txt compile to")
    for _, lock, _ in LAYERS:
        problems = install_mismatch(uv, lock)
        for problem in problems:
            print(f"lock-check: {lock}: {problem}")
        if not problems:
            count = len(pins((ROOT / lock).read_text()))
            print(f"lock-check: a fresh venv synced from {lock} holds exactly its {count} pins")
        failed = failed or bool(problems)
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("compile", "check"))
    parser.add_argument("--uv", default=str(Path(sys.executable).with_name("uv")))
    parser.add_argument("--upgrade-package", action="append", default=[], metavar="NAME")
    parser.add_argument("--upgrade", action="store_true", help="every pin to its newest")
    args = parser.parse_args(argv)
    uv = str(Path(args.uv).absolute())  # compile runs in a copy of the tree for `check`
    if args.command == "check":
        return check(uv)
    upgrade = ["--upgrade"] if args.upgrade else []
    for name in args.upgrade_package:
        upgrade += ["--upgrade-package", name]
    compile_locks(uv, ROOT, upgrade)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
