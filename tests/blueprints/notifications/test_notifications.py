"""Notifications over HTTP with a real worker, Redis and SMTP: preferences, unsubscribe,
security notices, digests, fan-out at scale, and the notifications other areas send."""

from __future__ import annotations

import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from flask.testing import FlaskClient
from sqlalchemy import func, insert, select

from extensions import db, redis
from models import Job, Notification, NotificationPreference, User
from scripts.devservices import RedisServer
from services.jobs import names
from services.messaging import deliveries, notifications
from tests.factories import PASSWORD, auth_headers, make_team, make_user
from tests.support import (
    LOGS,
    Mailbox,
    PrivateStacks,
    Worker,
    problem_body,
    running_worker,
    wait_for,
    wait_job,
)

PREFS = "/api/v1/notifications/preferences"


def operator_notice(user_ids: list[uuid.UUID], title: str) -> None:
    notifications.notify(user_ids, "operator_notice", {"title": title, "body": "Read me."},
                         event_key=f"notice:{uuid.uuid4()}")  # fmt: skip
    db.session.commit()


def rows_for(user: User) -> list[Notification]:
    db.session.rollback()
    return list(db.session.scalars(select(Notification).where(Notification.user_id == user.id)))


def test_email_off_still_shows_in_the_app(
    client: FlaskClient, worker: Worker, mailbox: Mailbox
) -> None:
    quiet, default = make_user(), make_user()
    changed = client.put(PREFS, json={"preferences": {"operations": {"email": False}}},
                         headers=auth_headers(quiet))  # fmt: skip
    assert changed.status_code == 200
    assert changed.get_json()["preferences"]["operations"]["email"] is False
    operator_notice([quiet.id, default.id], "Maintenance tonight")

    mailbox.wait_for(default.email, "Maintenance tonight")  # the control got its email
    time.sleep(0.5)
    assert mailbox.to(quiet.email) == []
    listed = client.get("/api/v1/notifications", headers=auth_headers(quiet)).get_json()["items"]
    assert [n["title"] for n in listed] == ["Maintenance tonight"] and listed[0]["read"] is False


def test_in_app_off_still_mails_and_files_the_notification_as_read(
    client: FlaskClient, worker: Worker, mailbox: Mailbox
) -> None:
    owner, quiet = make_user(), make_user()
    team_id = make_team(owner, members=[(quiet, "member")])
    changed = client.put(PREFS, json={"preferences": {"operations": {"in_app": False}}},
                         headers=auth_headers(quiet))  # fmt: skip
    assert changed.status_code == 200
    job = notifications.notify_team(team_id, "operator_notice",
                                    {"title": "Team notice", "body": "Read me."},
                                    event_key=f"notice:{uuid.uuid4()}")  # fmt: skip
    db.session.commit()
    wait_job(job.id, "succeeded", describe=worker.describe)

    mailbox.wait_for(quiet.email, "Team notice")  # email as before
    mailbox.wait_for(owner.email, "Team notice")
    listed = client.get("/api/v1/notifications", headers=auth_headers(quiet)).get_json()["items"]
    assert [(n["title"], n["read"]) for n in listed] == [("Team notice", True)]
    listed = client.get("/api/v1/notifications", headers=auth_headers(owner)).get_json()["items"]
    assert [(n["title"], n["read"]) for n in listed] == [("Team notice", False)]


def unsubscribe_token(message: Any) -> str:
    match = re.search(r"/unsubscribe\?token=([A-Za-z0-9._%-]+)", Mailbox.text_of(message))
    assert match, Mailbox.text_of(message)
    return match.group(1)


def test_unsubscribe_link_works_once_and_only_for_its_user(
    client: FlaskClient, worker: Worker, mailbox: Mailbox
) -> None:
    alice, bob = make_user(), make_user()
    operator_notice([alice.id, bob.id], "Quarterly update")
    message = mailbox.wait_for(alice.email, "Quarterly update")
    assert "One-Click" in str(message["List-Unsubscribe-Post"])
    assert "/api/v1/notifications/unsubscribe?token=" in str(message["List-Unsubscribe"])
    token = unsubscribe_token(message)

    done = client.post(f"/api/v1/notifications/unsubscribe?token={token}")  # no sign-in
    assert done.get_json() == {"unsubscribed": True, "category": "operations"}
    problem_body(client.post(f"/api/v1/notifications/unsubscribe?token={token}"), 422)
    problem_body(client.post(f"/api/v1/notifications/unsubscribe?token={token[:-3]}xyz"), 422)
    alice_prefs = client.get(PREFS, headers=auth_headers(alice)).get_json()["preferences"]
    bob_prefs = client.get(PREFS, headers=auth_headers(bob)).get_json()["preferences"]
    assert alice_prefs["operations"]["email"] is False
    assert bob_prefs["operations"]["email"] is True  # only its own user

    mailbox.messages.clear()
    operator_notice([alice.id, bob.id], "Second update")
    mailbox.wait_for(bob.email, "Second update")
    time.sleep(0.5)
    assert mailbox.to(alice.email) == []


def test_security_notices_ignore_opt_outs(
    client: FlaskClient, worker: Worker, mailbox: Mailbox
) -> None:
    user = make_user()
    headers = auth_headers(user)
    refused = client.put(
        PREFS, json={"preferences": {"security": {"email": False}}}, headers=headers
    )
    assert "security" in problem_body(refused, 422)["errors"]
    everything_off = {name: {"email": False, "in_app": False}
                      for name in notifications.CATEGORIES if name != "security"}  # fmt: skip
    assert (
        client.put(PREFS, json={"preferences": everything_off}, headers=headers).status_code == 200
    )
    # A sign-in from a new device is a security notice: mailed and shown regardless.
    login = {"email": user.email, "password": PASSWORD}
    client.post("/api/v1/auth/login", json=login, headers={"User-Agent": "Firefox on Linux test"})
    message = mailbox.wait_for(user.email, "New sign-in")
    assert "unsubscribe" not in Mailbox.text_of(message).lower()
    assert "security" in [n.category for n in rows_for(user)]


def test_digest_users_get_one_summary_instead_of_separate_emails(
    client: FlaskClient, worker: Worker, mailbox: Mailbox
) -> None:
    user = make_user()
    client.put(PREFS, json={"preferences": {"operations": {"email_digest": True}}},
               headers=auth_headers(user))  # fmt: skip
    operator_notice([user.id], "First thing")
    operator_notice([user.id], "Second thing")
    assert all(row.digest_pending for row in rows_for(user))
    today = datetime.now(UTC).date().isoformat()
    redis.client.delete(f"notifications:digests:{today}")  # left by an earlier test run today
    assert deliveries.start_digests() == 1
    assert deliveries.start_digests() == 0  # once a day, even run twice
    digest = mailbox.wait_for(user.email, "digest")
    text = Mailbox.text_of(digest)
    assert "First thing" in text and "Second thing" in text
    wait_for(lambda: not any(row.digest_pending for row in rows_for(user)), 20, worker.describe)
    assert len(mailbox.to(user.email)) == 1  # no separate emails


def test_reading_notifications(client: FlaskClient) -> None:
    user, other = make_user(), make_user()
    for title in ("one", "two", "three"):
        operator_notice([user.id], title)
    headers = auth_headers(user)
    assert client.get("/api/v1/notifications/unread-count", headers=headers).get_json() == {
        "unread": 3
    }
    first = client.get("/api/v1/notifications?limit=1", headers=headers).get_json()
    assert first["items"][0]["title"] == "three" and first["next_cursor"]
    read = client.post(f"/api/v1/notifications/{first['items'][0]['id']}/read", headers=headers)
    assert read.get_json()["notification"]["read"] is True
    unread = client.get("/api/v1/notifications?unread=true", headers=headers).get_json()["items"]
    assert [n["title"] for n in unread] == ["two", "one"]
    theirs = client.post(f"/api/v1/notifications/{first['items'][0]['id']}/read",
                         headers=auth_headers(other))  # fmt: skip
    problem_body(theirs, 404)
    assert client.post("/api/v1/notifications/read-all", headers=headers).get_json() == {
        "marked_read": 2
    }
    assert client.get("/api/v1/notifications/unread-count", headers=headers).get_json() == {
        "unread": 0
    }


def test_other_areas_notify(client: FlaskClient) -> None:
    owner, member = make_user(), make_user()
    team_id = make_team(owner, members=[(member, "member")])
    changed = client.patch(f"/api/v1/teams/{team_id}/members/{member.id}", json={"role": "admin"},
                           headers=auth_headers(owner))  # fmt: skip
    assert changed.status_code == 200
    titles = [n.title for n in rows_for(member)]
    assert any("role" in t.lower() for t in titles)

    invitee = make_user()
    client.post(f"/api/v1/teams/{team_id}/invites", json={"email": invitee.email, "role": "viewer"},
                headers=auth_headers(owner))  # fmt: skip
    assert any(n.category == "invites" for n in rows_for(invitee))


def test_fan_out_of_ten_thousand_is_a_few_broker_messages_and_idempotent(
    client: FlaskClient, private_stack: PrivateStacks
) -> None:
    stack = private_stack(
        keep=("database_url", "redis_url", "redis_sentinel_master", "smtp_url"), broker=True
    )
    own, broker = stack.settings, stack.broker
    assert broker is not None
    try:
        db.session.execute(
            insert(User),
            [{"id": uuid.uuid4(), "email": f"crowd{i}@example.com", "name": f"Crowd {i}"}
             for i in range(10_000)],
        )  # fmt: skip
        # Most of the crowd reads in the app only; 50 want email (one email job per chunk).
        crowd = list(db.session.scalars(select(User.id).order_by(User.id)))
        db.session.execute(
            insert(NotificationPreference),
            [{"user_id": uid, "category": "operations", "channel": "email", "enabled": False}
             for uid in crowd[50:]],
        )  # fmt: skip
        db.session.commit()
        publishes_before = _lpush_calls(broker)
        with running_worker(own, LOGS / "fanout-worker.log") as worker:
            for _ in range(2):  # the second run must add nothing
                job = notifications.notify_all_users(
                    "operator_notice", {"title": "Hello all", "body": "Welcome."},
                    event_key="notice:welcome",
                )  # fmt: skip
                db.session.commit()
                wait_job(job.id, "succeeded", timeout=120, describe=worker.describe)
        db.session.rollback()
        rows = db.session.scalar(
            select(func.count()).where(Notification.event_key == "notice:welcome")
        )
        assert rows == 10_000
        messages = _lpush_calls(broker) - publishes_before
        email_jobs = db.session.scalar(
            select(func.count()).where(Job.type == names.NOTIFICATIONS_SEND_EMAILS)
        )
        # 2 fan-out jobs + one email job for the chunk holding the 50 who want email.
        assert email_jobs == 1
        assert messages <= 2 + 1 + 2  # (+2 for any housekeeping publish in between)
    finally:
        broker.stop()


def _lpush_calls(server: RedisServer) -> int:
    import redis as redis_lib

    stats: dict[str, Any] = redis_lib.Redis.from_url(server.url(0)).info("commandstats")  # type: ignore[assignment]
    return int(stats.get("cmdstat_lpush", {}).get("calls", 0))
