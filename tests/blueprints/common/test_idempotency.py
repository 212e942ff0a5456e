"""Idempotency-Key on POSTs (API.md "Idempotency") and the jobs API a frontend polls."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from apiflask import APIFlask
from flask.testing import FlaskClient
from sqlalchemy import func, select, update
from werkzeug.test import TestResponse

import blueprints.common.idempotency as idempotency_view
from extensions import db
from models import IdempotencyKey, Job, User
from services.core import idempotency
from services.core.idempotency import request_fingerprint, reserve_key
from tests.factories import auth_headers, make_job, make_user
from tests.support import problem_body

PING = "/api/v1/admin/jobs/ping"


def count(model: type[Any]) -> int:
    return db.session.scalar(select(func.count()).select_from(model)) or 0


def ping(
    client: FlaskClient, admin: User, key: str | None, body: dict[str, Any] | None = None
) -> TestResponse:
    headers = dict(auth_headers(admin))
    if key is not None:
        headers["Idempotency-Key"] = key
    return client.post(PING, json={} if body is None else body, headers=headers)


# Idempotency-Key --------------------------------------------------------------------------


def test_same_key_and_body_replays_the_first_response(client: FlaskClient) -> None:
    admin = make_user(admin=True)
    first = ping(client, admin, "key-1")
    second = ping(client, admin, "key-1")

    assert first.status_code == second.status_code == 202
    assert "Idempotent-Replayed" not in first.headers
    assert second.headers["Idempotent-Replayed"] == "true"
    assert second.get_json() == first.get_json()
    assert second.headers["Location"] == first.headers["Location"]
    assert second.mimetype == "application/json"
    job_id = first.get_json()["job"]["id"]
    assert first.headers["Location"] == f"/api/v1/jobs/{job_id}"
    assert count(Job) == 1


def test_same_key_with_a_different_body_is_422(client: FlaskClient) -> None:
    admin = make_user(admin=True)
    assert ping(client, admin, "key-2").status_code == 202
    body = problem_body(ping(client, admin, "key-2", {"sleep_seconds": 1}), 422)
    assert "Idempotency-Key" in body["errors"]
    assert count(Job) == 1


def test_key_whose_first_request_is_in_progress_is_409(client: FlaskClient) -> None:
    admin = make_user(admin=True)
    # Another request holding the key right now (same principal, path and body).
    held = reserve_key(
        f"user:{admin.id}", "key-3", "POST", PING, request_fingerprint("POST", PING, b"{}")
    )
    assert held is None

    response = ping(client, admin, "key-3")
    problem_body(response, 409)
    assert int(response.headers["Retry-After"]) > 0
    assert count(Job) == 0
    # The holder keeps its reservation: the duplicate neither ran nor released it.
    record = db.session.scalar(select(IdempotencyKey).where(IdempotencyKey.key == "key-3"))
    assert record is not None and record.state == "in_progress"


def test_keys_are_scoped_per_principal(client: FlaskClient) -> None:
    alice, bob = make_user(admin=True), make_user(admin=True)
    for_alice = ping(client, alice, "shared-key")
    for_bob = ping(client, bob, "shared-key")

    assert for_alice.status_code == for_bob.status_code == 202
    assert "Idempotent-Replayed" not in for_bob.headers
    alice_job, bob_job = for_alice.get_json()["job"]["id"], for_bob.get_json()["job"]["id"]
    assert alice_job != bob_job
    owners = {job.id: job.user_id for job in db.session.scalars(select(Job))}
    assert owners == {uuid.UUID(alice_job): alice.id, uuid.UUID(bob_job): bob.id}


def test_reservation_with_an_expired_lock_is_taken_over(client: FlaskClient) -> None:
    admin = make_user(admin=True)
    # A request that reserved the key, then died without finishing.
    reserve_key(f"user:{admin.id}", "key-4", "POST", PING, request_fingerprint("POST", PING, b"{}"))
    db.session.execute(
        update(IdempotencyKey)
        .where(IdempotencyKey.key == "key-4")
        .values(locked_until=datetime.now(UTC) - timedelta(seconds=1))
    )
    db.session.commit()

    response = ping(client, admin, "key-4")
    assert response.status_code == 202, response.get_data(as_text=True)
    assert "Idempotent-Replayed" not in response.headers
    assert count(Job) == 1
    db.session.expire_all()
    record = db.session.scalar(select(IdempotencyKey).where(IdempotencyKey.key == "key-4"))
    assert record is not None
    assert (record.state, record.response_status) == ("completed", 202)
    # ...and from now on the key replays that answer.
    assert ping(client, admin, "key-4").headers["Idempotent-Replayed"] == "true"


def test_work_whose_answer_was_never_stored_is_not_done_twice(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The job committed, then the process died (or the database restarted) before the
    # answer was stored: long after the reservation's lock has run out, the client's
    # retry must hear that it was carried out, not start a second job.
    admin = make_user(admin=True)
    monkeypatch.setattr(idempotency_view, "complete_key", lambda *args: None)  # answer lost
    assert ping(client, admin, "key-lost").status_code == 202
    monkeypatch.undo()
    db.session.execute(
        update(IdempotencyKey)
        .where(IdempotencyKey.key == "key-lost")
        .values(locked_until=datetime.now(UTC) - timedelta(hours=1))
    )
    db.session.commit()

    retry = ping(client, admin, "key-lost")
    assert "was carried out" in problem_body(retry, 409)["detail"]
    assert count(Job) == 1


def test_cleanup_task_deletes_only_expired_keys(app: APIFlask) -> None:
    now = datetime.now(UTC)

    def key(name: str, expires_at: datetime) -> IdempotencyKey:
        return IdempotencyKey(
            principal="user:x",
            key=name,
            method="POST",
            path=PING,
            request_hash="0" * 64,
            state="completed",
            response_status=202,
            response_body="{}",
            expires_at=expires_at,
        )

    db.session.add_all(
        [key("old", now - timedelta(minutes=1)), key("fresh", now + timedelta(hours=1))]
    )
    db.session.commit()

    deleted = idempotency.delete_expired()

    assert deleted == 1
    assert db.session.scalars(select(IdempotencyKey.key)).all() == ["fresh"]


def test_without_a_key_every_post_runs_and_nothing_is_stored(client: FlaskClient) -> None:
    admin = make_user(admin=True)
    first, second = ping(client, admin, None), ping(client, admin, None)
    assert first.status_code == second.status_code == 202
    assert first.get_json()["job"]["id"] != second.get_json()["job"]["id"]
    assert "Idempotent-Replayed" not in second.headers
    assert count(Job) == 2
    assert count(IdempotencyKey) == 0


# jobs API ---------------------------------------------------------------------------------


def test_get_my_job(client: FlaskClient) -> None:
    user = make_user()
    job = make_job(user)
    db.session.commit()
    response = client.get(f"/api/v1/jobs/{job.id}", headers=auth_headers(user))
    assert response.status_code == 200
    body = response.get_json()["job"]
    assert body["id"] == str(job.id)
    assert body["type"] == "maintenance.ping"
    assert (body["status"], body["progress"], body["attempts"]) == ("queued", 0, 0)
    assert body["links"]["self"] == f"/api/v1/jobs/{job.id}"
    assert body["created_at"].endswith("Z") or "+00:00" in body["created_at"]


def test_list_pages_with_cursor_without_overlap(client: FlaskClient) -> None:
    user = make_user()
    other = make_user()
    now = datetime.now(UTC)
    # Two jobs share a timestamp (the id breaks the tie); one is older.
    newest = {make_job(user, created_at=now).id, make_job(user, created_at=now).id}
    oldest = make_job(user, created_at=now - timedelta(minutes=1)).id
    make_job(other)  # never listed for `user`
    db.session.commit()
    headers = auth_headers(user)

    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        url = "/api/v1/jobs?limit=1" + (f"&cursor={cursor}" if cursor else "")
        response = client.get(url, headers=headers)
        assert response.status_code == 200, response.get_data(as_text=True)
        page = response.get_json()
        assert len(page["items"]) == 1
        seen.append(page["items"][0]["id"])
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert pages < 3, "the last page must say there is no next page"

    assert pages == 3
    assert len(set(seen)) == 3  # no overlap
    assert {uuid.UUID(i) for i in seen[:2]} == newest  # newest first
    assert uuid.UUID(seen[2]) == oldest


def test_list_filters_by_status(client: FlaskClient) -> None:
    user = make_user()
    queued = make_job(user, status="queued")
    make_job(user, status="succeeded")
    db.session.commit()
    headers = auth_headers(user)

    response = client.get("/api/v1/jobs?status=queued", headers=headers)
    assert response.status_code == 200
    assert [j["id"] for j in response.get_json()["items"]] == [str(queued.id)]
    assert len(client.get("/api/v1/jobs", headers=headers).get_json()["items"]) == 2
    problem_body(client.get("/api/v1/jobs?status=bogus", headers=headers), 422)


def test_cancel_a_queued_job_then_again_is_409(client: FlaskClient) -> None:
    user = make_user()
    job = make_job(user)
    db.session.commit()
    headers = auth_headers(user)

    response = client.post(f"/api/v1/jobs/{job.id}/cancel", headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    cancelled = response.get_json()["job"]
    assert cancelled["status"] == "cancelled"
    assert cancelled["finished_at"] is not None
    db.session.expire_all()
    assert db.session.get(Job, job.id).status == "cancelled"  # type: ignore[union-attr]

    again = client.post(f"/api/v1/jobs/{job.id}/cancel", headers=headers)
    body = problem_body(again, 409)
    assert "cancelled" in body["detail"]
