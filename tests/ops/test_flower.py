"""Flower, as operators reach it: behind basic auth, seeing the real worker's tasks."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from apiflask import APIFlask
from flask.testing import FlaskClient

from config import Settings
from extensions import celery_app
from services.jobs import names
from tests.factories import auth_headers, make_user
from tests.support import ROOT, Worker, free_port, settings_env, wait_for, wait_job

pytestmark = pytest.mark.worker
LOGIN = "ops:flower-test-password"


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


@dataclass(frozen=True)
class Flower:
    url: str
    pid: int


@contextmanager
def running_flower(settings: Settings, tmp_path: Path, **env: str) -> Iterator[Flower]:
    """scripts/flower.py as the Procfile starts it; `env` holds its login settings."""
    port = free_port()
    environment = settings_env(settings) | {
        "FLOWER_PORT": str(port),
        "FLOWER_DB": str(tmp_path / f"flower-{port}.db"),
        **env,
    }
    log_path = tmp_path / f"flower-{port}.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "scripts/flower.py"], cwd=ROOT, env=environment, stdout=log, stderr=log
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(
            lambda: get(f"{base}/api/workers", LOGIN)[0] == 200,
            30,
            lambda: log_path.read_text(errors="replace")[-2000:],
        )
        yield Flower(base, process.pid)
    finally:
        process.terminate()
        process.wait(10)
        log.close()


@pytest.fixture
def flower(settings: Settings, tmp_path: Path) -> Iterator[str]:
    with running_flower(settings, tmp_path, FLOWER_BASIC_AUTH=LOGIN) as running:
        yield running.url


def test_flower_lists_our_jobs_with_ids_only_and_refuses_strangers(
    client: FlaskClient, worker: Worker, flower: str
) -> None:
    job_id = _ping(client)
    task = _flower_tasks_once_it_saw(flower, job_id)[job_id]
    assert task["name"] == "maintenance.ping"
    assert task["state"] == "SUCCESS"
    # The message carries the job id and nothing else (no addresses, no tokens).
    assert job_id in task["args"]
    assert task["args"].replace(job_id, "").strip("()[]',\" ") == ""

    assert get(f"{flower}/api/tasks")[0] == 401
    assert get(f"{flower}/api/tasks", "ops:wrong-password")[0] == 401
    assert get(f"{flower}/", None)[0] == 401


def _ping(client: FlaskClient) -> str:
    """A business task (an operator's ping job), run to success; its job id."""
    admin = make_user(admin=True)
    response = client.post("/api/v1/admin/jobs/ping", json={}, headers=auth_headers(admin))
    assert response.status_code == 202, response.get_data(as_text=True)
    job_id: str = response.get_json()["job"]["id"]
    wait_job(job_id, "succeeded")
    return job_id


def _flower_tasks_once_it_saw(flower: str, task_id: str) -> dict[str, Any]:
    """Flower's task list, once it holds `task_id` named and succeeded."""

    def listed() -> dict[str, Any] | None:
        status, tasks = get(f"{flower}/api/tasks?limit=1000", LOGIN)
        task = tasks.get(task_id) if status == 200 and tasks else None
        # The worker's process and its pool child send events on connections of their
        # own: Flower may hear `task-succeeded` before `task-received`, which names it.
        return tasks if task and task.get("name") and task.get("state") == "SUCCESS" else None

    tasks = wait_for(listed, 20, lambda: f"Flower never saw task {task_id}")
    assert tasks is not None
    return tasks


HOUSEKEEPING = (names.JOBS_RELAY, names.JOBS_REAP, names.AUDIT_SEAL)


def _runs_since(log: Path, offset: int, name: str) -> list[str]:
    """Ids of the `name` tasks the worker finished since `offset` of its log."""
    with log.open("rb") as fh:
        fh.seek(offset)
        text = fh.read().decode(errors="replace")
    return re.findall(rf"Task {re.escape(name)}\[([0-9a-f-]+)\] succeeded", text)


def test_flower_shows_business_tasks_but_not_the_housekeeping_every_few_seconds(
    client: FlaskClient, settings: Settings, worker: Worker, flower: str, tmp_path: Path
) -> None:
    """The relay (5 s), the reaper (10 s) and the audit sealer (2 s) buried the business
    tasks in Flower's history. They still run, from beat, on the worker; Flower sees
    none of it, even with publishers' task-sent events on."""
    offset = worker.log_path.stat().st_size
    beat_log = tmp_path / "beat.log"
    beat = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "make_celery:celery_app", "beat",
         "--loglevel=INFO"],
        cwd=ROOT, env=settings_env(settings) | {"CELERY_TASK_SENT_EVENTS": "true"},
        stdout=beat_log.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:

        def every_one_ran() -> dict[str, list[str]] | None:
            runs = {name: _runs_since(worker.log_path, offset, name) for name in HOUSEKEEPING}
            return runs if all(runs.values()) else None

        ran = wait_for(
            every_one_ran,
            40,
            lambda: f"housekeeping did not run; beat log:\n{beat_log.read_text()[-2000:]}",
        )
    finally:
        beat.terminate()
        beat.wait(20)
    job_id = _ping(client)
    tasks = _flower_tasks_once_it_saw(flower, job_id)
    assert tasks[job_id]["name"] == "maintenance.ping"
    assert ran is not None
    housekeeping_ids = {task_id for ids in ran.values() for task_id in ids}
    assert housekeeping_ids.isdisjoint(tasks), "Flower lists housekeeping runs"
    assert not [t for t in tasks.values() if t.get("name") in HOUSEKEEPING]


def test_every_task_but_the_housekeeping_sends_events(app: APIFlask) -> None:
    """Flower lists what sends events: every business task, not the every-few-seconds ticks."""
    silent = {name for name, task in celery_app.tasks.items() if not task.send_events}
    assert silent == set(HOUSEKEEPING)


def test_flower_refuses_to_start_without_credentials(settings: Settings, tmp_path: Path) -> None:
    empty_file = tmp_path / "empty-login"
    empty_file.write_text("\n")
    for env in (
        {"FLOWER_BASIC_AUTH": ""},
        {"FLOWER_BASIC_AUTH": "ops:"},  # an empty password
        {"FLOWER_BASIC_AUTH": ":secret"},
        {"FLOWER_BASIC_AUTH": f"{LOGIN},guest:"},
        {"FLOWER_BASIC_AUTH": "", "FLOWER_BASIC_AUTH_FILE": str(empty_file)},
        {"FLOWER_BASIC_AUTH": "", "FLOWER_BASIC_AUTH_FILE": str(tmp_path / "missing")},
    ):
        result = subprocess.run(
            [sys.executable, "scripts/flower.py"], cwd=ROOT, env=settings_env(settings) | env,
            capture_output=True, timeout=30, check=False,
        )  # fmt: skip
        assert result.returncode != 0, env
        assert b"FLOWER_BASIC_AUTH" in result.stderr, (env, result.stderr[-500:])


def _command_line(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def test_flower_password_is_never_on_the_command_line(settings: Settings, tmp_path: Path) -> None:
    """Every local user can read every process's argv (`ps`, /proc/<pid>/cmdline)."""
    password = LOGIN.split(":", 1)[1]
    login_file = tmp_path / "flower-login"
    login_file.write_text(LOGIN + "\n")
    login_file.chmod(0o600)
    for env in ({"FLOWER_BASIC_AUTH": LOGIN},
                {"FLOWER_BASIC_AUTH": "", "FLOWER_BASIC_AUTH_FILE": str(login_file)}):  # fmt: skip
        with running_flower(settings, tmp_path, **env) as running:
            command_line = _command_line(running.pid)
            assert "flower" in command_line
            assert password not in command_line and "basic-auth" not in command_line
            assert get(f"{running.url}/api/workers", LOGIN)[0] == 200
            assert get(f"{running.url}/api/workers", "ops:wrong")[0] == 401
