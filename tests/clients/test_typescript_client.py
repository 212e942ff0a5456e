"""The typed TypeScript client (clients/typescript) driving a real flow against a live
stack: gunicorn serving the app as in production, the session's Celery worker, localstripe
and the SMTP server. The flow itself is Node code type-checked with `tsc --strict`
(clients/typescript/e2e/flow.ts); this runs it and shows its output when it fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from apiflask import APIFlask

from config import Settings
from tests.support import ROOT, Mailbox, WebServer, Worker

CLIENT = ROOT / "clients" / "typescript"

pytestmark = pytest.mark.worker


@pytest.fixture
def web(settings: Settings, app: APIFlask) -> Iterator[WebServer]:
    """gunicorn on a free port whose links point at itself, with one-minute access tokens
    (the flow waits for its token to expire to prove the client refreshes it)."""
    server = WebServer("tsclient", settings)
    server.settings = settings.model_copy(
        update={"public_api_url": f"http://127.0.0.1:{server.port}", "access_token_minutes": 1}
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.timeout(300)
def test_the_typed_client_registers_pays_exports_uploads_refreshes_and_logs_out(
    web: WebServer, worker: Worker, mailbox: Mailbox, tmp_path: Path
) -> None:
    npm = shutil.which("npm")
    assert npm, "npm is missing: `make test` installs it (scripts/ensure_node.sh)"
    assert (CLIENT / "node_modules").is_dir(), "run `make test` (it installs the client's deps)"
    with mailbox.saving_to(tmp_path / "mail") as mail_dir:
        env = {
            **os.environ,
            "MAYCOLE_API_URL": f"http://127.0.0.1:{web.port}",
            "MAYCOLE_MAIL_DIR": str(mail_dir),
        }
        run = subprocess.run(
            [npm, "--prefix", str(CLIENT), "run", "e2e"],
            env=env, capture_output=True, text=True, timeout=240, check=False,
        )  # fmt: skip
    output = f"{run.stdout}\n{run.stderr}"
    print(run.stdout)  # each step and its time (pytest -rP shows it)
    assert run.returncode == 0, f"{output}\n{web.describe()}\n{worker.describe()}"
    assert "e2e: every step passed" in run.stdout, output
