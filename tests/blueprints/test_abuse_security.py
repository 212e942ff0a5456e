"""Abuse paths of issue 14 in payments, analytics, jobs and member search, each sent the
way an attacker would (HTTP) and judged by what a user would notice.

Where the proof needs a job to wait (a run still pending, an email not sent yet), the app
publishes to a broker of this module's own and a worker is started on it only once the
attacker's requests are in: no session worker can race the assertion.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select, update

from config import Settings
from extensions import db
from models import Job, Payment
from scripts.devservices import RedisServer, free_port
from tests.blueprints.test_payments import VISA, pay, payment_row, payments_count, personal_team
from tests.factories import auth_headers, make_team, make_user, verify_email
from tests.support import (
    ROOT,
    Worker,
    make_settings,
    problem_body,
    wait_job,
)

LOGS = ROOT / "var" / "test-logs"
DECLINING = "pm_card_chargeCustomerFail"  # declined when charged (localstripe as Stripe)
NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)


@pytest.fixture(scope="module")
def quiet_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A broker no worker listens to until a test starts one on it."""
    server = RedisServer(free_port(), tmp_path_factory.mktemp("abuse-broker"))
    server.start()
    yield server
    server.stop()


def quiet_settings(
    settings: Settings, broker: RedisServer, db_index: int, **extra: Any
) -> Settings:
    keep = ("database_url", "redis_url", "smtp_url", "stripe_api_base", "stripe_secret_key",
            "stripe_webhook_secret")  # fmt: skip
    base = {name: getattr(settings, name) for name in keep}
    return make_settings(**base, celery_broker_url=broker.url(db_index), **extra)


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
