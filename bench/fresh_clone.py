"""How long a fresh clone's `make run` takes to be ready (issue 19: within 90 s here).

    python3 bench/fresh_clone.py [--cold] [--repo PATH]

Clones the repository (this checkout by default) into a temporary directory and runs
`make run` there with every port free (PostgreSQL, Redis, the mail sink, localstripe, the
web and Flower), so it installs .venv from nothing and starts its own servers. It prints
when the install ended (the run lock's stamp appears), when the URLs were printed and
when `/readyz` first answered 200, then stops the stack as Ctrl-C does and removes the
clone. `--cold` gives uv an empty cache (what a new machine sees). Standard library
only: it runs before any .venv exists.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PORTS = ("PGPORT", "REDIS_PORT", "SMTP_PORT", "STRIPE_PORT", "PORT", "FLOWER_PORT")
URLS_PRINTED = "Ctrl-C stops everything."
TIMEOUT = 300.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as reply:
            return int(reply.status) == 200
    except OSError:
        return False


def measure(repo: Path, cold: bool, keep_log: Path | None) -> dict[str, float]:
    marks: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="fresh-clone-") as tmp:
        clone = Path(tmp) / "maycole"
        git, make = shutil.which("git") or "git", shutil.which("make") or "make"
        subprocess.run([git, "clone", "-q", str(repo), str(clone)], check=True)  # noqa: S603
        ports = {name: str(free_port()) for name in PORTS}
        env = {**os.environ, **ports}
        for inherited in ("VIRTUAL_ENV", "DATABASE_URL", "REDIS_URL", "SMTP_URL"):
            env.pop(inherited, None)
        if cold:
            env["UV_CACHE_DIR"] = str(Path(tmp) / "uv-cache")
        log = (Path(tmp) / "make-run.log").open("w")
        start = time.monotonic()
        stack = subprocess.Popen(  # noqa: S603 - our own command line
            [make, "run"], cwd=clone, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, start_new_session=True,
        )  # fmt: skip

        def read_output() -> None:
            assert stack.stdout is not None
            for line in stack.stdout:
                log.write(f"{time.monotonic() - start:7.2f} {line}")
                if URLS_PRINTED in line:
                    marks.setdefault("urls printed", time.monotonic() - start)

        reader = threading.Thread(target=read_output, daemon=True)
        reader.start()
        try:
            while time.monotonic() - start < TIMEOUT and stack.poll() is None:
                if "installed" not in marks and any((clone / ".venv").glob(".synced-run-*")):
                    marks["installed"] = time.monotonic() - start
                if ready(int(ports["PORT"])):
                    marks["ready"] = time.monotonic() - start
                    break
                time.sleep(0.2)
        finally:
            os.killpg(stack.pid, signal.SIGINT)  # the stack's own group: what Ctrl-C reaches
            try:
                stack.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(stack.pid, signal.SIGKILL)
                stack.wait()
            reader.join(timeout=5)
            log.close()
            if keep_log:
                shutil.copy(Path(tmp) / "make-run.log", keep_log)
            if "ready" not in marks:
                print((Path(tmp) / "make-run.log").read_text()[-4000:], file=sys.stderr)
    return marks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cold", action="store_true", help="an empty uv cache")
    parser.add_argument("--repo", type=Path, default=ROOT)
    parser.add_argument("--log", type=Path, help="keep make run's output, timed, here")
    args = parser.parse_args()
    marks = measure(args.repo, args.cold, args.log)
    print("  ".join(f"{name} {seconds:.1f} s" for name, seconds in marks.items()))
    if "ready" in marks and "installed" in marks:
        install, start = marks["installed"], marks["ready"] - marks["installed"]
        print(f"install {install:.1f} s + start {start:.1f} s")
    return 0 if "ready" in marks else 1


if __name__ == "__main__":
    raise SystemExit(main())
