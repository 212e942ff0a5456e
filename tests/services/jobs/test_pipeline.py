"""The request-to-task path with a real prefork worker: 202, progress, retries, dead letters."""

from __future__ import annotations

import json
import uuid
from typing import Any

from flask.testing import FlaskClient
from sqlalchemy import func, select

from extensions import db
from models import AuditLog
from tests.factories import auth_headers, make_user
from tests.support import Worker, fetch_job, wait_for, wait_job


def start_ping(client: FlaskClient, headers: Any, **body: object) -> dict[str, Any]:
    response = client.post("/api/v1/admin/jobs/ping", json=body, headers=headers)
    assert response.status_code == 202, response.get_json()
    job: dict[str, Any] = response.get_json()["job"]
    assert response.headers["Location"] == f"/api/v1/jobs/{job['id']}"
    return job


def pings_recorded(job_id: str) -> int:
    db.session.rollback()
    count = db.session.scalar(
        select(func.count()).where(
            AuditLog.action == "maintenance.pinged", AuditLog.subject_id == job_id
        )
    )
    return int(count or 0)


def test_accepted_job_runs_on_a_worker_and_reports_its_result(
    client: FlaskClient, worker: Worker
) -> None:
    admin = make_user(admin=True)
    headers = auth_headers(admin)
    job = start_ping(client, headers, sleep_seconds=0.5)
    assert job["status"] == "queued" and job["progress"] == 0

    wait_job(job["id"], "succeeded", describe=worker.describe)
    body = client.get(f"/api/v1/jobs/{job['id']}", headers=headers).get_json()["job"]
    assert body["status"] == "succeeded"
    assert body["progress"] == 100
    assert body["result"] == {"pong": True, "attempt": 1}
    assert body["attempts"] == 1
    assert body["started_at"] and body["finished_at"]
    assert pings_recorded(job["id"]) == 1
    # The task was published right after the commit, not by the relay.
    assert fetch_job(job["id"]).published_at is not None


def test_transient_failures_retry_with_backoff_then_succeed(
    client: FlaskClient, worker: Worker
) -> None:
    headers = auth_headers(make_user(admin=True))
    job = start_ping(client, headers, fail_attempts=2)
    done = wait_job(job["id"], "succeeded", describe=worker.describe)
    assert done.attempts == 3
    assert done.result == {"pong": True, "attempt": 3}
    assert done.error is None
    assert pings_recorded(job["id"]) == 1  # the failed attempts left no effects


def test_exhausted_retries_make_a_dead_letter_that_an_admin_can_replay(
    client: FlaskClient, worker: Worker
) -> None:
    admin = make_user(admin=True)
    headers = auth_headers(admin)
    job = start_ping(client, headers, fail_attempts=3)  # max_attempts is 3 in tests
    dead = wait_job(job["id"], "dead", describe=worker.describe)
    assert dead.attempts == 3
    # Its owner hears about it (category "jobs": in the app by default, not by email).
    mine = client.get("/api/v1/notifications", headers=headers).get_json()["items"]
    assert [n["category"] for n in mine] == ["jobs"]
    assert "maintenance.ping" in mine[0]["body"] and job["id"] in (mine[0]["link"] or "")
    assert "deliberate failure on attempt 3" in (dead.error or "")

    letters = client.get("/api/v1/admin/jobs?status=dead", headers=headers).get_json()["items"]
    assert [item["id"] for item in letters] == [job["id"]]
    assert "Traceback" in letters[0]["traceback"]  # operators see the trace...
    user_view = client.get(f"/api/v1/jobs/{job['id']}", headers=headers).get_json()["job"]
    assert "traceback" not in user_view  # ...users do not

    replay = client.post(f"/api/v1/admin/jobs/{job['id']}/retry", headers=headers)
    assert replay.status_code == 202
    done = wait_job(job["id"], "succeeded", describe=worker.describe)
    assert done.attempts == 4
    assert pings_recorded(job["id"]) == 1
    again = client.post(f"/api/v1/admin/jobs/{job['id']}/retry", headers=headers)
    assert again.status_code == 409


def test_cancelling_a_running_job_stops_it_at_its_next_progress_report(
    client: FlaskClient, worker: Worker
) -> None:
    headers = auth_headers(make_user(admin=True))
    job = start_ping(client, headers, sleep_seconds=5)
    wait_job(job["id"], "running", describe=worker.describe)
    response = client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=headers)
    assert response.status_code == 200
    cancelled = wait_job(job["id"], "cancelled", timeout=10, describe=worker.describe)
    assert cancelled.progress < 100
    assert cancelled.finished_at is not None
    assert pings_recorded(job["id"]) == 0


def test_users_only_see_their_own_jobs(client: FlaskClient, worker: Worker) -> None:
    admin = make_user(admin=True)
    job = start_ping(client, auth_headers(admin))
    other = auth_headers(make_user())
    assert client.get(f"/api/v1/jobs/{job['id']}", headers=other).status_code == 404
    assert client.get(f"/api/v1/jobs/{uuid.uuid4()}", headers=other).status_code == 404
    assert client.get("/api/v1/jobs", headers=other).get_json()["items"] == []
    assert client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=other).status_code == 404
    wait_job(job["id"], "succeeded", describe=worker.describe)


def test_request_id_follows_the_job_into_the_worker_logs(
    client: FlaskClient, worker: Worker
) -> None:
    request_id = f"trace-{uuid.uuid4().hex}"
    headers = {**auth_headers(make_user(admin=True)), "X-Request-ID": request_id}
    response = client.post("/api/v1/admin/jobs/ping", json={}, headers=headers)
    assert response.headers["X-Request-ID"] == request_id
    job_id = response.get_json()["job"]["id"]
    wait_job(job_id, "succeeded", describe=worker.describe)

    def logged() -> list[dict[str, Any]]:
        lines = worker.log_path.read_text(errors="replace").splitlines()
        records = [json.loads(line) for line in lines if line.startswith("{")]
        return [r for r in records if r.get("job_id") == job_id and r.get("event") == "job_started"]

    records = wait_for(logged, 5, worker.describe)
    assert records[0]["request_id"] == request_id
