"""The lock files (scripts/locks.py) against the requirements they are compiled from.

`make lock-check` (CI) recompiles them, which needs the package index; these read the
files alone, so a requirement edited without `make lock` fails here first, and so does a
layer whose versions drift from the one below it (`make run` and production would run
versions that `make test` never saw).
"""

from __future__ import annotations

import re

import pytest

from scripts.locks import LAYERS, ROOT, normalize, pins

INCLUDE = re.compile(r"^-r\s+(\S+)")


def direct_pins(name: str) -> dict[str, str]:
    """Name -> version of every `==` pin in a requirements file and those it includes."""
    text = (ROOT / name).read_text()
    found = pins(text)
    for line in text.splitlines():
        include = INCLUDE.match(line)
        if include:
            found |= direct_pins(include[1])
    return found


def locked(lock: str) -> dict[str, str]:
    return pins((ROOT / lock).read_text())


@pytest.mark.parametrize(("source", "lock"), [(source, lock) for source, lock, _ in LAYERS])
def test_every_requirement_is_locked_at_its_pinned_version(source: str, lock: str) -> None:
    wanted, have = direct_pins(source), locked(lock)
    assert wanted, f"{source} pins nothing"
    stale = {name: (version, have.get(name)) for name, version in wanted.items()
             if have.get(name) != version}  # fmt: skip
    assert not stale, f"{source} (pinned, locked) differ, run `make lock`: {stale}"


@pytest.mark.parametrize(("lock", "lower"), [(lock, lower) for _, lock, lower in LAYERS if lower])
def test_each_lock_holds_the_layer_below_at_the_same_versions(lock: str, lower: str) -> None:
    upper, below = locked(lock), locked(lower)
    differ = {name: (version, upper.get(name)) for name, version in below.items()
              if upper.get(name) != version}  # fmt: skip
    assert not differ, f"{lower} vs {lock}: {differ}"
    assert len(upper) > len(below)


@pytest.mark.parametrize("lock", [lock for _, lock, _ in LAYERS])
def test_every_locked_pin_carries_a_hash(lock: str) -> None:
    # A pin's block is its `name==version \` line and the indented lines under it.
    blocks = re.split(r"(?m)^(?=[A-Za-z0-9])", (ROOT / lock).read_text())
    unhashed = [block.split()[0] for block in blocks[1:] if "--hash=sha256:" not in block]
    assert not unhashed
    assert len(blocks) - 1 == len(locked(lock))


def test_pins_reads_lock_and_freeze_lines_alike() -> None:
    text = "Flask_Cors==6.0.5 \\\n    --hash=sha256:ab\ncelery[redis]==5.7.0\n# via x\n"
    assert pins(text) == {"flask-cors": "6.0.5", "celery": "5.7.0"}
    assert normalize("ruamel.yaml") == "ruamel-yaml"
