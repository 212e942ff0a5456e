"""A Python client generated from /openapi.json works (issue 17): openapi-python-client
reads the document without a warning, and the client it writes lists a user's teams from
gunicorn serving the app, as a frontend or a script would use it.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from apiflask import APIFlask

from config import Settings
from tests.factories import auth_headers, make_team, make_user
from tests.support import WebServer

GENERATOR = Path(sys.executable).with_name("openapi-python-client")
PACKAGE = "maycole_generated_client"


@pytest.fixture
def web(settings: Settings, app: APIFlask) -> Iterator[WebServer]:
    server = WebServer("python-client", settings)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def generate(app: APIFlask, where: Path) -> str:
    """Write the served document, generate a client package from it; the generator's output."""
    document = where / "openapi.json"
    document.write_text(json.dumps(app.test_client().get("/openapi.json").get_json()))
    # The generator formats its output with ruff, which it looks up on PATH.
    env = {**os.environ, "PATH": f"{GENERATOR.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(
        [str(GENERATOR), "generate", "--path", str(document), "--meta", "none",
         "--output-path", str(where / PACKAGE)],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


def test_a_generated_python_client_lists_my_teams(
    app: APIFlask, web: WebServer, tmp_path: Path
) -> None:
    output = generate(app, tmp_path)
    assert "warning" not in output.lower(), output
    assert "error" not in output.lower(), output

    owner = make_user(name="Client Owner")
    team_id = make_team(owner, name="Generated Client Co")
    token = auth_headers(owner)["Authorization"].removeprefix("Bearer ")

    sys.path.insert(0, str(tmp_path))
    try:
        client_module = importlib.import_module(f"{PACKAGE}.client")
        list_teams = importlib.import_module(f"{PACKAGE}.api.teams.list_teams")
        client = client_module.AuthenticatedClient(
            base_url=f"http://127.0.0.1:{web.port}", token=token
        )
        with client:
            response = list_teams.sync_detailed(client=client, limit=10)
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m.split(".")[0] == PACKAGE]:
            del sys.modules[name]

    assert response.status_code == 200, response.content
    page = response.parsed
    teams = {str(t.id): (t.name, t.role) for t in page.items}
    assert teams[str(team_id)] == ("Generated Client Co", "owner")
    assert len(teams) == 2 and page.next_cursor is None  # and the personal team
