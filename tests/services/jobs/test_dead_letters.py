"""Dead letters end to end with a real worker: list, inspect, replay, replay a type, discard.

`maintenance.ping` with `fail_attempts=3` uses up the 3 attempts tests allow and dies; a
replay gets 3 more, so its 4th attempt succeeds. The same actions through `flask jobs`.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from apiflask import APIFlask
from click.testing import Result
from flask.testing import FlaskClient
from sqlalchemy import select

from extensions import db
from models import AuditLog, Job, User
from tests.factories import auth_headers, make_user
from tests.services.jobs.test_pipeline import pings_recorded, start_ping
from tests.support import Worker, fetch_job, problem_body, wait_job

ADMIN_JOBS = "/api/v1/admin/jobs"
PING = "maintenance.ping"


def bury(client: FlaskClient, headers: Any, worker: Worker, count: int = 1) -> list[str]:
    """Start `count` pings that fail every attempt they are given, and wait until dead."""
    ids = [start_ping(client, headers, fail_attempts=3)["id"] for _ in range(count)]
    for job_id in ids:
        dead = wait_job(job_id, "dead", describe=worker.describe)
        assert dead.attempts == dead.max_attempts == 3
    return ids


def audit_rows(action: str) -> list[AuditLog]:
    db.session.rollback()
    return list(db.session.scalars(select(AuditLog).where(AuditLog.action == action)
                                   .order_by(AuditLog.id)))  # fmt: skip


def dead_ids(client: FlaskClient, headers: Any, query: str = "") -> list[str]:
    response = client.get(f"{ADMIN_JOBS}?status=dead{query}", headers=headers)
    assert response.status_code == 200, response.get_json()
    return [item["id"] for item in response.get_json()["items"]]


def past_job(type_: str, status: str, attempts: int = 3) -> Job:
    """A job that finished badly earlier (no worker needed: it is only looked at)."""
    now = datetime.now(UTC)
    job = Job(
        id=uuid.uuid4(), type=type_, queue="default", status=status, attempts=attempts,
        max_attempts=attempts, error="Boom: earlier failure", started_at=now, finished_at=now,
        published_at=now,
    )  # fmt: skip
    db.session.add(job)
    db.session.commit()
    return job


def test_dead_letters_are_listed_and_inspected_by_admins_only(
    client: FlaskClient, worker: Worker
) -> None:
    admin = make_user(admin=True)
    headers = auth_headers(admin)
    first, second = bury(client, headers, worker, count=2)
    healthy = start_ping(client, headers)["id"]
    wait_job(healthy, "succeeded", describe=worker.describe)

    assert dead_ids(client, headers) == [second, first]  # newest first, the healthy one absent
    page = client.get(f"{ADMIN_JOBS}?status=dead&type={PING}&limit=1", headers=headers).get_json()
    assert [item["id"] for item in page["items"]] == [second]
    assert dead_ids(client, headers, f"&limit=1&cursor={page['next_cursor']}") == [first]
    assert dead_ids(client, headers, "&type=exports.build") == []

    job = client.get(f"{ADMIN_JOBS}/{first}", headers=headers).get_json()["job"]
    assert job["status"] == "dead"
    assert job["args"] == {"sleep_seconds": 0.0, "fail_attempts": 3}
    assert job["attempts"] == 3 and job["max_attempts"] == 3
    assert "deliberate failure on attempt 3" in job["error"]
    assert "Traceback" in job["traceback"] and "TransientPingError" in job["traceback"]
    assert job["finished_at"] and job["started_at"] and job["worker"]
    assert job["user_id"] == str(admin.id)

    # The owner's own view never carries the traceback; other people get nothing.
    own = client.get(f"/api/v1/jobs/{first}", headers=headers).get_json()["job"]
    assert own["status"] == "dead" and "traceback" not in own
    user = auth_headers(make_user())
    problem_body(client.get(f"{ADMIN_JOBS}/{first}", headers=user), 403)
    problem_body(client.get(f"{ADMIN_JOBS}?status=dead", headers=user), 403)
    problem_body(client.get(f"{ADMIN_JOBS}/{first}"), 401)
    problem_body(client.get(f"{ADMIN_JOBS}/{uuid.uuid4()}", headers=headers), 404)


def test_replaying_a_dead_letter_runs_it_once_more_and_is_audited(
    client: FlaskClient, worker: Worker
) -> None:
    admin = make_user(admin=True)
    (job_id,) = bury(client, auth_headers(admin), worker)

    headers = {**auth_headers(admin), "Idempotency-Key": f"replay-{uuid.uuid4()}"}
    response = client.post(f"{ADMIN_JOBS}/{job_id}/retry", headers=headers)
    assert response.status_code == 202, response.get_json()
    assert response.headers["Location"] == f"/api/v1/jobs/{job_id}"
    queued = response.get_json()["job"]
    assert queued["status"] == "queued"
    assert (queued["attempts"], queued["max_attempts"]) == (3, 6)  # a fresh allowance of 3
    # A client repeating the request (same key) gets the same answer, not a second replay.
    repeat = client.post(f"{ADMIN_JOBS}/{job_id}/retry", headers=headers)
    assert repeat.headers.get("Idempotent-Replayed") == "true"
    assert repeat.status_code == 202

    done = wait_job(job_id, "succeeded", describe=worker.describe)
    assert done.attempts == 4 and done.result == {"pong": True, "attempt": 4}
    assert done.error is None and done.traceback is None
    assert pings_recorded(job_id) == 1  # the work happened exactly once
    assert dead_ids(client, auth_headers(admin)) == []

    (audit,) = audit_rows("job.retried")
    assert audit.actor_user_id == admin.id and audit.subject_id == job_id
    assert audit.data["via"] == "api" and audit.data["previous_status"] == "dead"
    assert "deliberate failure on attempt 3" in audit.data["error"]

    again = client.post(f"{ADMIN_JOBS}/{job_id}/retry", headers=auth_headers(admin))
    assert "succeeded" in problem_body(again, 409)["detail"]
    problem_body(client.post(f"{ADMIN_JOBS}/{uuid.uuid4()}/retry", headers=auth_headers(admin)),
                 404)  # fmt: skip
    user = auth_headers(make_user())
    problem_body(client.post(f"{ADMIN_JOBS}/{job_id}/retry", headers=user), 403)


def test_retry_all_replays_the_dead_jobs_of_one_type_and_nothing_else(
    client: FlaskClient, worker: Worker
) -> None:
    admin = make_user(admin=True)
    headers = auth_headers(admin)
    first, second = bury(client, headers, worker, count=2)
    other_type = past_job("exports.build", "dead")
    failed_ping = past_job(PING, "failed", attempts=1)

    # Bounded: one job now, the rest on the next call.
    body = {"type": PING, "status": "dead", "limit": 1}
    one = client.post(f"{ADMIN_JOBS}/retry", json=body, headers=headers)
    assert one.status_code == 200, one.get_json()
    assert one.get_json()["retried"] == 1 and one.get_json()["remaining"] == 1
    rest = client.post(f"{ADMIN_JOBS}/retry", json={"type": PING}, headers=headers).get_json()
    assert (rest["retried"], rest["remaining"]) == (1, 0)
    assert {*one.get_json()["job_ids"], *rest["job_ids"]} == {first, second}
    for job_id in (first, second):
        assert wait_job(job_id, "succeeded", describe=worker.describe).attempts == 4
        assert pings_recorded(job_id) == 1

    assert fetch_job(other_type.id).status == "dead"  # another type: untouched
    assert fetch_job(failed_ping.id).status == "failed"  # another status: untouched
    assert dead_ids(client, headers) == [str(other_type.id)]
    audits = audit_rows("job.retried_bulk")
    assert [(a.subject_id, a.data["count"], a.actor_user_id) for a in audits] == [
        (PING, 1, admin.id), (PING, 1, admin.id),
    ]  # fmt: skip

    nothing = client.post(f"{ADMIN_JOBS}/retry", json={"type": PING}, headers=headers).get_json()
    assert (nothing["retried"], nothing["remaining"]) == (0, 0)
    assert len(audit_rows("job.retried_bulk")) == 2  # nothing changed, nothing audited

    failed = {"type": PING, "status": "failed"}
    replayed = client.post(f"{ADMIN_JOBS}/retry", json=failed, headers=headers).get_json()
    assert replayed["job_ids"] == [str(failed_ping.id)]
    assert wait_job(failed_ping.id, "succeeded", describe=worker.describe).attempts == 2

    unknown = client.post(f"{ADMIN_JOBS}/retry", json={"type": "no.such"}, headers=headers)
    assert "type" in problem_body(unknown, 422)["errors"]
    user = auth_headers(make_user())
    problem_body(client.post(f"{ADMIN_JOBS}/retry", json={"type": PING}, headers=user), 403)


def test_a_discarded_dead_letter_leaves_the_list_but_stays_as_history(
    client: FlaskClient, worker: Worker
) -> None:
    admin = make_user(admin=True)
    headers = auth_headers(admin)
    (job_id,) = bury(client, headers, worker)

    user = auth_headers(make_user())
    problem_body(client.post(f"{ADMIN_JOBS}/{job_id}/discard", json={}, headers=user), 403)
    reason = {"reason": "probe from an old deploy"}
    response = client.post(f"{ADMIN_JOBS}/{job_id}/discard", json=reason, headers=headers)
    assert response.status_code == 200, response.get_json()
    job = response.get_json()["job"]
    assert job["status"] == "cancelled"
    assert job["result"]["discarded"] is True and job["result"]["reason"] == reason["reason"]
    assert job["result"]["discarded_by"] == str(admin.id)
    assert job["attempts"] == 3 and "deliberate failure" in job["error"]
    assert "Traceback" in job["traceback"]  # the history is kept

    assert dead_ids(client, headers) == []
    kept = client.get(f"{ADMIN_JOBS}/{job_id}", headers=headers).get_json()["job"]
    assert kept["status"] == "cancelled" and "deliberate failure" in kept["error"]
    retry = client.post(f"{ADMIN_JOBS}/{job_id}/retry", headers=headers)
    assert "discarded" in problem_body(retry, 409)["detail"]
    problem_body(client.post(f"{ADMIN_JOBS}/{job_id}/discard", json={}, headers=headers), 409)
    assert fetch_job(job_id).status == "cancelled" and pings_recorded(job_id) == 0

    (audit,) = audit_rows("job.discarded")
    assert audit.actor_user_id == admin.id and audit.subject_id == job_id
    assert audit.data["reason"] == reason["reason"] and audit.data["previous_status"] == "dead"

    alive = start_ping(client, headers)["id"]
    wait_job(alive, "succeeded", describe=worker.describe)
    problem_body(client.post(f"{ADMIN_JOBS}/{alive}/discard", json={}, headers=headers), 409)


def flask_jobs(app: APIFlask, *args: str) -> Result:
    return app.test_cli_runner().invoke(args=["jobs", *args])


def test_flask_jobs_cli_does_the_same_for_operators_on_the_box(
    app: APIFlask, client: FlaskClient, worker: Worker
) -> None:
    admin: User = make_user(admin=True)
    replayed, discarded, rest = bury(client, auth_headers(admin), worker, count=3)

    listing = flask_jobs(app, "dead", "--type", PING)
    assert listing.exit_code == 0, listing.output
    assert [line.split()[0] for line in listing.output.splitlines()] == [rest, discarded, replayed]
    assert "attempts 3/3" in listing.output and "deliberate failure" in listing.output
    assert "no dead jobs of type exports.build" in flask_jobs(app, "dead", "--type",
                                                              "exports.build").output  # fmt: skip

    shown = flask_jobs(app, "show", replayed)
    assert shown.exit_code == 0, shown.output
    assert "status:     dead" in shown.output and "attempts:   3 of 3" in shown.output
    assert '"fail_attempts": 3' in shown.output and "TransientPingError" in shown.output
    missing = flask_jobs(app, "show", str(uuid.uuid4()))
    assert missing.exit_code == 1 and "No such job." in missing.output

    retried = flask_jobs(app, "retry", replayed)
    assert retried.exit_code == 0, retried.output
    assert f"re-queued {replayed}" in retried.output
    assert wait_job(replayed, "succeeded", describe=worker.describe).attempts == 4

    thrown_away = flask_jobs(app, "discard", discarded, "--reason", "known bad input")
    assert thrown_away.exit_code == 0, thrown_away.output
    assert fetch_job(discarded).status == "cancelled"
    refused = flask_jobs(app, "retry", discarded)
    assert refused.exit_code == 1 and "discarded" in refused.output

    everything = flask_jobs(app, "retry-all", "--type", PING)
    assert everything.exit_code == 0, everything.output
    assert f"re-queued 1 dead {PING} job(s)" in everything.output
    assert wait_job(rest, "succeeded", describe=worker.describe).attempts == 4
    assert fetch_job(discarded).status == "cancelled"  # a discarded job is not a dead letter
    assert flask_jobs(app, "dead").output.strip() == "no dead jobs"
    assert [pings_recorded(j) for j in (replayed, discarded, rest)] == [1, 0, 1]
    assert flask_jobs(app, "retry-all", "--type", "no.such").exit_code == 1

    actions = ("job.retried", "job.discarded", "job.retried_bulk")
    audits = [row for action in actions for row in audit_rows(action)]
    assert [(a.action, a.actor_user_id, a.data["via"]) for a in audits] == [
        ("job.retried", None, "cli"), ("job.discarded", None, "cli"),
        ("job.retried_bulk", None, "cli"),
    ]  # fmt: skip
    assert audits[1].data["reason"] == "known bad input" and audits[2].data["count"] == 1
