"""Abuse paths of issue 14 in payments, analytics, jobs and member search, each sent the
way an attacker would (HTTP) and judged by what a user would notice.

Where the proof needs a job to wait (a run still pending, an email not sent yet), the app
publishes to a broker of this module's own and a worker is started on it only once the
attacker's requests are in: no session worker can race the assertion.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select, update

from config import Settings
from extensions import celery_app, db
from models import Job, Payment
from models.search import SearchDocument
from scripts.devservices import RedisServer
from services.core import tokens
from services.insights import aggregation
from services.jobs.queries import CANCELLABLE
from services.teams import invites
from tests.blueprints.payments.test_payments import VISA, pay, payment_row, payments_count
from tests.factories import (
    PASSWORD,
    auth_headers,
    make_api_key,
    make_team,
    make_user,
    personal_team,
    verify_email,
)
from tests.services.insights.aggregation_helpers import events_settled
from tests.support import (
    LOGS,
    Mailbox,
    PrivateStacks,
    Worker,
    bearer,
    fetch_job,
    private_redis,
    problem_body,
    running_worker,
    wait_job,
)

DECLINING = "pm_card_chargeCustomerFail"  # declined when charged (localstripe as Stripe)
NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)


@pytest.fixture(scope="module")
def quiet_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A broker no worker listens to until a test starts one on it."""
    with private_redis(tmp_path_factory.mktemp("abuse-broker")) as server:
        yield server


# What the quiet stacks keep of the session's settings (the broker is the quiet one).
KEEP = ("database_url", "redis_url", "redis_sentinel_master", "smtp_url", "stripe_api_base",
        "stripe_secret_key",
        "stripe_webhook_secret")  # fmt: skip


def count_jobs(**where: Any) -> int:
    db.session.rollback()
    query = select(func.count()).select_from(Job).filter_by(**where)
    return int(db.session.scalar(query) or 0)


# --- payments: unverified accounts, card testing -----------------------------------------


def test_an_unverified_account_cannot_take_payments(client: FlaskClient, worker: Worker) -> None:
    user = make_user()
    user.email_verified_at = None  # as after registering, before following the link
    db.session.commit()
    team_id, headers = personal_team(user), auth_headers(user)

    refused = pay(client, team_id, headers, "stolen-card-1")
    assert "verify your email" in problem_body(refused, 403)["detail"].lower()
    assert payments_count() == 0
    assert count_jobs() == 0  # no charge queued, so no gateway call either

    verify_email(user)  # the same request, once the address is verified, goes through
    accepted = pay(client, team_id, headers, "stolen-card-1")
    assert accepted.status_code == 202, accepted.get_data(as_text=True)
    wait_job(accepted.get_json()["job"]["id"], "succeeded", describe=worker.describe)


def test_declined_cards_pause_the_teams_payments_for_the_window(
    client: FlaskClient, worker: Worker, settings: Settings
) -> None:
    user = make_user()
    team_id, headers = personal_team(user), auth_headers(user)
    for attempt in range(settings.payments_failed_limit):  # card testing: decline after decline
        body = pay(client, team_id, headers, f"card-test-{attempt}", payment_method=DECLINING)
        assert body.status_code == 202, body.get_data(as_text=True)
        wait_job(body.get_json()["job"]["id"], "succeeded", describe=worker.describe)
        assert payment_row(body.get_json()["payment"]["id"]).status == "failed"
    payments, jobs = payments_count(), count_jobs()

    for key, method in (("card-test-next", DECLINING), ("a-good-card", VISA)):
        blocked = pay(client, team_id, headers, key, payment_method=method)
        assert "failed" in problem_body(blocked, 429)["detail"]
        retry_after = int(blocked.headers["Retry-After"])
        assert 0 < retry_after <= settings.payments_failed_window_seconds
    assert (payments_count(), count_jobs()) == (payments, jobs)  # nothing created, no charge

    # Another team of the same user is not paused: the limit is the team's.
    other_team = make_team(user, "Second shop")
    other = pay(client, other_team, headers, "elsewhere-1")
    assert other.status_code == 202, other.get_data(as_text=True)
    wait_job(other.get_json()["job"]["id"], "succeeded", describe=worker.describe)

    # Once the failures are older than the window, the team takes payments again.
    db.session.execute(
        update(Payment)
        .where(Payment.team_id == team_id, Payment.status == "failed")
        .values(updated_at=func.now() - timedelta(seconds=settings.payments_failed_window_seconds))
    )
    db.session.commit()
    resumed = pay(client, team_id, headers, "a-good-card")
    assert resumed.status_code == 202, resumed.get_data(as_text=True)
    wait_job(resumed.get_json()["job"]["id"], "succeeded", describe=worker.describe)


# --- analytics: a loop of on-demand runs -------------------------------------------------


def _events(client: FlaskClient, team_id: uuid.UUID, user: Any, name: str, count: int) -> None:
    at = NOW - timedelta(hours=2)
    response = client.post(
        f"/api/v1/teams/{team_id}/analytics/events",
        json={"events": [{"name": name, "occurred_at": at.isoformat()} for _ in range(count)]},
        headers=auth_headers(user),
    )
    assert response.status_code == 202, response.get_data(as_text=True)


def _total(client: FlaskClient, team_id: uuid.UUID, user: Any, name: str) -> int:
    response = client.get(
        f"/api/v1/teams/{team_id}/analytics/metrics",
        query_string={"name": name, "from": (NOW - timedelta(hours=3)).isoformat(),
                      "to": NOW.isoformat()},
        headers=auth_headers(user),
    )  # fmt: skip
    assert response.status_code == 200, response.get_data(as_text=True)
    return int(response.get_json()["total"])


def test_a_loop_of_aggregate_requests_makes_one_run_of_the_callers_team_only(
    quiet_broker: RedisServer, private_stack: PrivateStacks
) -> None:
    stack = private_stack(
        keep=KEEP, broker=quiet_broker, broker_db=1, analytics_aggregate_cooldown_seconds=600
    )
    cooled, client = stack.settings, stack.client()
    owner, stranger = make_user(), make_user()
    team_id, other_team = make_team(owner), make_team(stranger)
    _events(client, team_id, owner, "page.view", 4)
    _events(client, other_team, stranger, "page.view", 3)
    url = f"/api/v1/teams/{team_id}/analytics/aggregate"

    answers = [client.post(url, json={}, headers=auth_headers(owner)) for _ in range(10)]
    assert {a.status_code for a in answers} == {202}
    job_ids = {a.get_json()["job"]["id"] for a in answers}
    assert len(job_ids) == 1  # the same job back, not ten
    assert {a.headers["Location"] for a in answers} == {f"/api/v1/jobs/{job_ids.pop()}"}
    job_id = answers[0].get_json()["job"]["id"]
    window = {"from": (NOW - timedelta(days=1)).isoformat(), "to": NOW.isoformat()}
    other_window = client.post(url, json=window, headers=auth_headers(owner))
    assert job_id in problem_body(other_window, 409)["detail"]
    assert count_jobs(type="analytics.aggregate") == 1

    events_settled()
    with running_worker(cooled, LOGS / "abuse-analytics-worker.log", concurrency=1) as worker:
        wait_job(job_id, "succeeded", describe=worker.describe)
    assert _total(client, team_id, owner, "page.view") == 4
    assert _total(client, other_team, stranger, "page.view") == 0  # not this run's team

    again = client.post(url, json={}, headers=auth_headers(owner))
    problem_body(again, 429)
    assert 0 < int(again.headers["Retry-After"]) <= 600
    assert count_jobs(type="analytics.aggregate") == 1

    # The hourly all-teams run folds the other team's events and not the first team's twice.
    events_settled()
    aggregation.run()
    db.session.commit()
    assert _total(client, other_team, stranger, "page.view") == 3
    assert _total(client, team_id, owner, "page.view") == 4


# --- jobs: operators' API keys, system jobs ----------------------------------------------


def test_an_operators_api_key_does_not_reach_other_users_jobs(client: FlaskClient) -> None:
    victim, operator = make_user(), make_user(admin=True)
    job = Job(id=uuid.uuid4(), type="exports.build", queue="exports", user_id=victim.id)
    db.session.add(job)
    db.session.commit()
    with_key = {"X-API-Key": make_api_key(operator, ["read", "write"])}

    problem_body(client.get(f"/api/v1/jobs/{job.id}", headers=with_key), 404)
    problem_body(client.post(f"/api/v1/jobs/{job.id}/cancel", headers=with_key), 404)
    untouched = fetch_job(job.id)
    assert (untouched.status, untouched.cancel_requested_at) == ("queued", None)

    # Signed in with a token, the operator still reaches it (support, dead letters).
    shown = client.get(f"/api/v1/jobs/{job.id}", headers=auth_headers(operator))
    assert shown.status_code == 200 and shown.get_json()["job"]["id"] == str(job.id)


def test_users_cannot_cancel_the_password_changed_email(
    quiet_broker: RedisServer, private_stack: PrivateStacks, mailbox: Mailbox
) -> None:
    assert set(CANCELLABLE) <= set(celery_app.tasks)
    stack = private_stack(keep=KEEP, broker=quiet_broker, broker_db=2)
    quiet, client = stack.settings, stack.client()
    user = make_user()
    signed_in = client.post("/api/v1/auth/login", json={"email": user.email, "password": PASSWORD})
    assert signed_in.status_code == 200, signed_in.get_data(as_text=True)
    headers = bearer(signed_in.get_json()["access_token"])
    changed = client.post(
        "/api/v1/auth/password/change",
        json={"current_password": PASSWORD, "new_password": "a brand new horse battery"},
        headers=headers,
    )
    assert changed.status_code == 204, changed.get_data(as_text=True)

    listed = client.get("/api/v1/jobs", query_string={"type": "email.send"}, headers=headers)
    [email_job] = listed.get_json()["items"]
    assert email_job["status"] == "queued"
    refused = client.post(f"/api/v1/jobs/{email_job['id']}/cancel", headers=headers)
    assert "cannot be cancelled" in problem_body(refused, 409)["detail"]
    assert fetch_job(email_job["id"]).cancel_requested_at is None

    # Work the user asked for and may drop, such as an export, still can be cancelled.
    export = client.post(
        f"/api/v1/teams/{personal_team(user)}/exports",
        json={"resource": "payments", "format": "csv"},
        headers=headers,
    )
    assert export.status_code == 202, export.get_data(as_text=True)
    export_job = export.get_json()["job"]["id"]
    cancelled = client.post(f"/api/v1/jobs/{export_job}/cancel", headers=headers)
    assert cancelled.status_code == 200 and cancelled.get_json()["job"]["status"] == "cancelled"

    with running_worker(quiet, LOGS / "abuse-jobs-worker.log", concurrency=1) as worker:
        wait_job(email_job["id"], "succeeded", describe=worker.describe)
    assert mailbox.wait_for(user.email, "password was changed")


# --- member search after account deletion ------------------------------------------------


def _member_hits(client: FlaskClient, team_id: uuid.UUID, user: Any, q: str) -> list[str]:
    response = client.get(
        f"/api/v1/teams/{team_id}/search",
        query_string={"q": q, "type": "member"},
        headers=auth_headers(user),
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    return [hit["title"] for hit in response.get_json()["items"]]


def test_a_deleted_account_is_no_longer_found_in_member_search(
    client: FlaskClient, worker: Worker
) -> None:
    owner = make_user(name="Olga Owner")
    leaver = make_user(name="Zebedee Quill", email="zebedee.quill@example.com")
    team_id = make_team(owner, "Shop")
    invite = invites.create_invite(owner, team_id, leaver.email, "member")
    joined = client.post(
        f"/api/v1/invites/{tokens.mint_invite(invite)}/accept", headers=auth_headers(leaver)
    )
    assert joined.status_code == 200, joined.get_data(as_text=True)
    assert _member_hits(client, team_id, owner, "zebedee") == ["Zebedee Quill"]

    deletion = client.delete("/api/v1/me", headers=auth_headers(leaver))
    assert deletion.status_code == 202, deletion.get_data(as_text=True)
    # Hidden from the moment the deletion is asked for, before the job has run.
    assert _member_hits(client, team_id, owner, "zebedee") == []
    wait_job(deletion.get_json()["job"]["id"], "succeeded", describe=worker.describe)
    for q in ("zebedee", "quill", "Zebedee Quill", "zebedee.quill@example.com"):
        assert _member_hits(client, team_id, owner, q) == [], q
    db.session.rollback()
    left_behind = db.session.scalar(
        select(func.count()).select_from(SearchDocument).where(
            SearchDocument.subject_type == "member", SearchDocument.title == "Zebedee Quill"
        )
    )  # fmt: skip
    assert left_behind == 0  # the documents themselves are gone, not only hidden
