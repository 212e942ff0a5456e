"""scripts/run_stack.py: what `make run` hands to honcho."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from scripts import run_stack
from tests.support import ROOT

# Each process prints the address its links point at, then lingers so that honcho (which
# stops everything once one process exits) lets every one of them print.
PROBE = (
    f'{sys.executable} -c "import time; from config import Settings; '
    "print('linked', Settings().public_api_url, flush=True); time.sleep(3)\""
)


def _linked_addresses(tmp_path: Path) -> list[str]:
    procfile = tmp_path / "Procfile"
    procfile.write_text(f"web: {PROBE}\nworker: {PROBE}\n")
    honcho = Path(sys.executable).with_name("honcho")
    result = subprocess.run(
        [str(honcho), "start", "-f", str(procfile), "-d", str(ROOT), "-p", os.environ["PORT"]],
        env=os.environ.copy(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    return sorted(re.findall(r"linked (\S+)", result.stdout))


def test_every_process_links_to_the_web_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """honcho gives the worker PORT+100: left alone it would mail links to that port."""
    for name, value in {"APP_ENV": "development", "PORT": "18000", "BIND": "",
                        "PUBLIC_API_URL": ""}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    assert _linked_addresses(tmp_path) == ["http://127.0.0.1:18000", "http://127.0.0.1:18100"]

    assert run_stack.pin_public_api_url() == "http://127.0.0.1:18000"
    assert _linked_addresses(tmp_path) == ["http://127.0.0.1:18000"] * 2

    monkeypatch.setenv("PUBLIC_API_URL", "https://tunnel.example.com")
    assert run_stack.pin_public_api_url() == "https://tunnel.example.com"  # configured wins
