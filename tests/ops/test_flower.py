"""Flower, as operators reach it: behind basic auth, seeing the real worker's tasks."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from config import Settings
from tests.factories import auth_headers, make_user
from tests.support import ROOT, Worker, settings_env, wait_for, wait_job

pytestmark = pytest.mark.worker
LOGIN = "ops:flower-test-password"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(url: str, login: str | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url)
    if login:
        request.add_header("Authorization", "Basic " + base64.b64encode(login.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except OSError:  # not listening yet
        return 0, None


@pytest.fixture
def flower(settings: Settings, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = settings_env(settings) | {
        "FLOWER_BASIC_AUTH": LOGIN,
        "FLOWER_PORT": str(port),
        "FLOWER_DB": str(tmp_path / "flower.db"),
    }
    log = (tmp_path / "flower.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "scripts/flower.py"], cwd=ROOT, env=env, stdout=log, stderr=log
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(
            lambda: get(f"{base}/api/workers", LOGIN)[0] == 200,
            30,
            lambda: (tmp_path / "flower.log").read_text(errors="replace")[-2000:],
        )
        yield base
    finally:
        process.terminate()
        process.wait(10)
        log.close()


def test_flower_lists_our_jobs_with_ids_only_and_refuses_strangers(
    client: FlaskClient, worker: Worker, flower: str
) -> None:
    admin = make_user(admin=True)
    response = client.post("/api/v1/admin/jobs/ping", json={}, headers=auth_headers(admin))
    assert response.status_code == 202, response.get_data(as_text=True)
    job_id = response.get_json()["job"]["id"]
    wait_job(job_id, "succeeded")

    def seen() -> dict[str, Any] | None:
        status, tasks = get(f"{flower}/api/tasks?limit=200", LOGIN)
        task = tasks.get(job_id) if status == 200 and tasks else None
        # The worker's process and its pool child send events on connections of their
        # own: Flower may hear `task-succeeded` before `task-received`, which names it.
        return task if task and task.get("name") and task.get("state") == "SUCCESS" else None

    task = wait_for(seen, 20, lambda: "Flower never saw the task")
    assert task is not None
    assert task["name"] == "maintenance.ping"
    assert task["state"] == "SUCCESS"
    # The message carries the job id and nothing else (no addresses, no tokens).
    assert job_id in task["args"]
    assert task["args"].replace(job_id, "").strip("()[]',\" ") == ""

    assert get(f"{flower}/api/tasks")[0] == 401
    assert get(f"{flower}/api/tasks", "ops:wrong-password")[0] == 401
    assert get(f"{flower}/", None)[0] == 401


def test_flower_refuses_to_start_without_credentials(settings: Settings) -> None:
    env = settings_env(settings) | {"FLOWER_BASIC_AUTH": ""}
    result = subprocess.run(
        [sys.executable, "scripts/flower.py"], cwd=ROOT, env=env, capture_output=True,
        timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert b"FLOWER_BASIC_AUTH" in result.stderr
