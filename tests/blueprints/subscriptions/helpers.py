"""Helpers of the subscription tests: answers, subscribing, the live row, audit actions,
invitations and a Stripe client on the test gateway.
"""

from __future__ import annotations

import uuid
from typing import Any

from flask.testing import FlaskClient
from sqlalchemy import select
from werkzeug.test import TestResponse

from extensions import db
from models import AuditLog, Job, Subscription, User
from tests.factories import (
    auth_headers,
)
from tests.support import wait_job

TEAMS = "/api/v1/teams"
VISA = "pm_card_visa"


def ok(response: TestResponse, status: int = 200) -> Any:
    assert response.status_code == status, response.get_data(as_text=True)
    return response.get_json()


def subscription_url(team_id: uuid.UUID) -> str:
    return f"{TEAMS}/{team_id}/subscription"


def current(client: FlaskClient, team_id: uuid.UUID, user: User) -> dict[str, Any]:
    found: dict[str, Any] = ok(client.get(subscription_url(team_id), headers=auth_headers(user)))[
        "subscription"
    ]
    return found


def finished(client: FlaskClient, response: TestResponse, status: str = "succeeded") -> Job:
    """Wait for the job a 202 answer started."""
    body = ok(response, 202)
    assert response.headers["Location"] == f"/api/v1/jobs/{body['job']['id']}"
    return wait_job(body["job"]["id"], status)


def subscribe(
    client: FlaskClient, team_id: uuid.UUID, user: User, plan: str = "pro", key: str | None = None
) -> Subscription:
    """Subscribe through the API and wait until the worker has created it at the gateway."""
    response = client.post(
        subscription_url(team_id),
        json={"plan": plan, "payment_method": VISA},
        headers={**auth_headers(user), "Idempotency-Key": key or str(uuid.uuid4())},
    )
    finished(client, response)
    row = live_row(team_id)
    assert row is not None
    return row


def live_row(team_id: uuid.UUID) -> Subscription | None:
    db.session.rollback()
    return db.session.scalar(
        select(Subscription)
        .where(Subscription.team_id == team_id, Subscription.status != "canceled")
        .execution_options(populate_existing=True)
    )


def audit_actions(team_id: uuid.UUID | None) -> list[str]:
    db.session.rollback()
    where = AuditLog.team_id == team_id if team_id else AuditLog.team_id.is_(None)
    return list(db.session.scalars(select(AuditLog.action).where(where).order_by(AuditLog.id)))
