"""Subscriptions over HTTP: plans, subscribing, changing and cancelling, seat limits."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from flask.testing import FlaskClient
from sqlalchemy import func, select
from werkzeug.test import TestResponse

from extensions import db
from integrations.stripe_gateway import get_gateway
from models import AuditLog, Job, Subscription, TeamInvite, User
from services.core import plans, tokens
from tests.blueprints.subscriptions.helpers import (
    TEAMS,
    VISA,
    audit_actions,
    current,
    finished,
    live_row,
    ok,
    subscribe,
    subscription_url,
)
from tests.factories import (
    add_member,
    auth_headers,
    give_plan,
    make_team,
    make_user,
    verify_email,
)
from tests.support import Worker, problem_body, wait_job


def invite(client: FlaskClient, team_id: uuid.UUID, by: User, email: str) -> TestResponse:
    url = f"{TEAMS}/{team_id}/invites"
    return client.post(url, json={"email": email}, headers=auth_headers(by))


def accept(client: FlaskClient, invite_id: str, user: User) -> TestResponse:
    db.session.rollback()
    row = db.session.get(TeamInvite, uuid.UUID(invite_id))
    assert row is not None
    token = tokens.mint_invite(row)
    return client.post(f"/api/v1/invites/{token}/accept", headers=auth_headers(user))


# Plans ------------------------------------------------------------------------------------


def test_plans_are_listed_publicly_monthly_first(client: FlaskClient) -> None:
    body = ok(client.get("/api/v1/plans"))
    names = [p["name"] for p in body["items"]]
    assert names == ["free", "pro", "business", "pro_yearly", "business_yearly"]
    assert body["next_cursor"] is None
    free, pro, business, pro_yearly, _ = body["items"]
    assert free == {
        "name": "free", "display_name": "Free", "amount": 0, "currency": "USD",
        "interval": "month", "limits": {"seats": 3},
    }  # fmt: skip
    assert (pro["amount"], pro["currency"], pro["limits"]["seats"]) == (1900, "USD", 10)
    assert business["limits"]["seats"] > pro["limits"]["seats"]
    assert (pro_yearly["interval"], pro_yearly["amount"]) == ("year", 19000)
    assert ok(client.get("/api"))["areas"]["plans"] == "/api/v1/plans"


def test_a_team_that_never_subscribed_is_on_the_free_plan(client: FlaskClient) -> None:
    owner, member = make_user(), make_user()
    team_id = make_team(owner, members=[(member, "member")])

    found = current(client, team_id, member)
    assert found["id"] is None
    assert (found["plan"]["name"], found["effective_plan"], found["status"]) == (
        "free", "free", "active",
    )  # fmt: skip
    assert found["seats"] == {"limit": 3, "used": 2}
    assert found["cancel_at_period_end"] is False


# Subscribing ------------------------------------------------------------------------------


def test_subscribing_activates_the_subscription_and_stores_the_gateway_ids(
    client: FlaskClient, worker: Worker
) -> None:
    owner = make_user()
    team_id = make_team(owner)
    url, body = subscription_url(team_id), {"plan": "pro", "payment_method": VISA}
    headers = {**auth_headers(owner), "Idempotency-Key": "subscribe-once"}

    problem_body(client.post(url, json=body, headers=auth_headers(owner)), 422)  # no key
    first = client.post(url, json=body, headers=headers)
    accepted = ok(first, 202)
    assert accepted["job"]["type"] == "subscriptions.create"
    assert (accepted["subscription"]["status"], accepted["subscription"]["plan"]["name"]) == (
        "incomplete", "pro",
    )  # fmt: skip
    assert accepted["subscription"]["effective_plan"] == "free"  # nothing paid yet
    job = wait_job(accepted["job"]["id"], "succeeded")
    assert job.result is not None and job.result["status"] == "active"

    # The client retries (its connection dropped): the first answer, no second subscription.
    again = client.post(url, json=body, headers=headers)
    assert again.status_code == 202 and again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == accepted
    assert db.session.scalar(select(func.count()).select_from(Subscription)) == 1
    assert db.session.scalar(select(func.count()).select_from(Job).where(Job.type == job.type)) == 1

    found = current(client, team_id, owner)
    assert (found["status"], found["plan"]["name"], found["effective_plan"]) == (
        "active", "pro", "pro",
    )  # fmt: skip
    assert found["seats"] == {"limit": 10, "used": 1}
    assert datetime.fromisoformat(found["current_period_end"]) > datetime.now(UTC)
    row = live_row(team_id)
    assert row is not None and str(row.id) == found["id"]
    assert row.provider_subscription_id and row.provider_subscription_id.startswith("sub_")
    assert row.provider_customer_id and row.provider_customer_id.startswith("cus_")
    at_gateway = get_gateway().get_subscription(row.provider_subscription_id)
    assert (at_gateway.status, at_gateway.plan_id, at_gateway.customer_id) == (
        "active", plans.PLANS["pro"].gateway_plan_id, row.provider_customer_id,
    )  # fmt: skip
    assert at_gateway.metadata["subscription_id"] == str(row.id)
    assert audit_actions(team_id)[-2:] == ["subscription.created", "subscription.updated"]
    [activated] = db.session.scalars(
        select(AuditLog).where(AuditLog.action == "subscription.updated")
    ).all()
    assert activated.data["status"] == {"from": "incomplete", "to": "active"}
    assert activated.actor_user_id == owner.id

    # A second subscription is a plan change, not a new subscription.
    other = {**headers, "Idempotency-Key": "subscribe-twice"}
    problem_body(client.post(url, json={**body, "plan": "business"}, headers=other), 409)


def test_a_declined_first_payment_fails_the_job_and_the_team_can_try_again(
    client: FlaskClient, worker: Worker
) -> None:
    owner = make_user()
    team_id = make_team(owner)
    headers = {**auth_headers(owner), "Idempotency-Key": "declined"}
    body = {"plan": "pro", "payment_method": "pm_card_chargeCustomerFail"}

    job = finished(client, client.post(subscription_url(team_id), json=body, headers=headers),
                   "failed")  # fmt: skip
    assert job.error and "did not go through" in job.error
    found = current(client, team_id, owner)
    assert (found["status"], found["effective_plan"]) == ("incomplete", "free")

    subscribe(client, team_id, owner, "pro")  # with a card that works
    assert current(client, team_id, owner)["status"] == "active"
    assert "subscription.abandoned" in audit_actions(team_id)


# Changing ---------------------------------------------------------------------------------


def test_changing_the_plan_moves_the_gateway_subscription(
    client: FlaskClient, worker: Worker
) -> None:
    owner, admin, member = make_user(), make_user(), make_user()
    team_id = make_team(owner, members=[(admin, "admin"), (member, "member")])
    row = subscribe(client, team_id, owner, "pro")
    url = subscription_url(team_id)

    problem_body(client.patch(url, json={"plan": "business"}, headers=auth_headers(member)), 403)
    problem_body(client.patch(url, json={"plan": "pro"}, headers=auth_headers(admin)), 409)
    problem_body(client.patch(url, json={"plan": "free"}, headers=auth_headers(admin)), 422)
    problem_body(client.patch(url, json={"plan": "gold"}, headers=auth_headers(admin)), 422)

    response = client.patch(url, json={"plan": "business"}, headers=auth_headers(admin))
    job = finished(client, response)
    assert job.type == "subscriptions.change_plan" and job.args["plan"] == "business"

    found = current(client, team_id, member)
    assert (found["plan"]["name"], found["status"], found["seats"]["limit"]) == (
        "business", "active", 50,
    )  # fmt: skip
    assert row.provider_subscription_id is not None
    at_gateway = get_gateway().get_subscription(row.provider_subscription_id)
    assert at_gateway.plan_id == plans.PLANS["business"].gateway_plan_id
    requested = db.session.scalar(
        select(AuditLog).where(AuditLog.action == "subscription.plan_change_requested")
    )
    assert requested is not None and requested.actor_user_id == admin.id
    assert requested.data["plan"] == {"from": "pro", "to": "business"}
    changed = db.session.scalars(
        select(AuditLog).where(AuditLog.action == "subscription.updated").order_by(AuditLog.id)
    ).all()[-1]
    assert changed.data["plan"] == {"from": "pro", "to": "business"}


def test_cancelling_keeps_the_plan_until_the_period_ends_and_resume_undoes_it(
    client: FlaskClient, worker: Worker
) -> None:
    owner = make_user()
    team_id = make_team(owner)
    row = subscribe(client, team_id, owner, "pro")
    assert row.provider_subscription_id is not None
    url, headers = subscription_url(team_id), auth_headers(owner)

    problem_body(client.post(f"{url}/resume", headers=headers), 409)  # nothing to resume
    job = finished(client, client.delete(url, headers=headers))
    assert job.type == "subscriptions.cancel"
    found = current(client, team_id, owner)
    assert (found["status"], found["cancel_at_period_end"], found["effective_plan"]) == (
        "active", True, "pro",
    )  # fmt: skip
    assert get_gateway().get_subscription(row.provider_subscription_id).cancel_at_period_end
    problem_body(client.delete(url, headers=headers), 409)  # already ending

    job = finished(client, client.post(f"{url}/resume", headers=headers))
    assert job.type == "subscriptions.resume"
    assert current(client, team_id, owner)["cancel_at_period_end"] is False
    assert not get_gateway().get_subscription(row.provider_subscription_id).cancel_at_period_end
    actions = audit_actions(team_id)
    assert actions.index("subscription.cancellation_requested") < actions.index(
        "subscription.resumption_requested"
    )


def test_a_second_change_waits_for_the_first(client: FlaskClient) -> None:
    owner = make_user()
    team_id = make_team(owner)
    subscription = give_plan(team_id, "pro")
    # The first change is still running at the gateway.
    first = Job(
        type="subscriptions.change_plan", queue="payments", status="running", team_id=team_id,
        args={"subscription_id": str(subscription.id), "plan": "business"},
        published_at=datetime.now(UTC),
    )  # fmt: skip
    db.session.add(first)
    db.session.commit()
    url, headers = subscription_url(team_id), auth_headers(owner)

    busy = problem_body(client.delete(url, headers=headers), 409)
    assert busy["job_id"] == str(first.id)
    problem_body(client.patch(url, json={"plan": "business"}, headers=headers), 409)


# Seat limits ------------------------------------------------------------------------------


def test_the_free_plan_limits_seats_until_the_team_upgrades(
    client: FlaskClient, worker: Worker
) -> None:
    owner = make_user()
    team_id = make_team(owner)
    first = ok(invite(client, team_id, owner, "one@example.com"), 201)["invite"]
    second = ok(invite(client, team_id, owner, "two@example.com"), 201)["invite"]

    # Owner + two pending invitations fill the free plan's three seats.
    full = problem_body(invite(client, team_id, owner, "three@example.com"), 409)
    assert full["detail"] == "Your plan allows 3 members; upgrade to invite more."
    assert (full["plan"], full["seats"]) == ("free", 3)

    # Someone joined another way meanwhile: the last seat goes to the first to accept.
    add_member(team_id, make_user(), "member")
    ok(accept(client, first["id"], verify_email(make_user(email="one@example.com"))))
    two = verify_email(make_user(email="two@example.com"))
    late = problem_body(accept(client, second["id"], two), 409)
    assert "allows 3 members" in late["detail"]

    subscribe(client, team_id, owner, "pro")
    ok(accept(client, second["id"], two))
    ok(invite(client, team_id, owner, "three@example.com"), 201)
    assert current(client, team_id, owner)["seats"] == {"limit": 10, "used": 5}
