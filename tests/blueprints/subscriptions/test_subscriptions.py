"""Plans and team subscriptions against localstripe over HTTP and a real worker: subscribe,
replay, change plan, cancel/resume, seat limits, and the daily reconciliation jobs."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import stripe
from flask.testing import FlaskClient
from sqlalchemy import func, select
from werkzeug.test import TestResponse

from config import Settings
from extensions import db
from integrations.payments import PI_SUCCEEDED
from integrations.stripe_gateway import get_gateway
from models import AuditLog, Job, Notification, Payment, Subscription, TeamInvite, User
from services.billing import reconciliation
from services.core import plans, tokens
from services.jobs import names
from tests.factories import (
    add_member,
    auth_headers,
    give_plan,
    make_team,
    make_user,
    verify_email,
)
from tests.support import Mailbox, Worker, problem_body, wait_for, wait_job

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


def invite(client: FlaskClient, team_id: uuid.UUID, by: User, email: str) -> TestResponse:
    url = f"{TEAMS}/{team_id}/invites"
    return client.post(url, json={"email": email}, headers=auth_headers(by))


def accept(client: FlaskClient, invite_id: str, user: User) -> TestResponse:
    db.session.rollback()
    row = db.session.get(TeamInvite, uuid.UUID(invite_id))
    assert row is not None
    token = tokens.mint_invite(row)
    return client.post(f"/api/v1/invites/{token}/accept", headers=auth_headers(user))


def stripe_client(settings: Settings) -> stripe.StripeClient:
    """Straight to the gateway, as someone using its dashboard would."""
    return stripe.StripeClient(
        settings.stripe_secret_key, base_addresses={"api": settings.stripe_api_base}
    )


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


# Reconciliation ---------------------------------------------------------------------------


def test_reconcile_converges_a_subscription_changed_at_the_gateway(
    client: FlaskClient, worker: Worker
) -> None:
    owner = make_user()
    team_id = make_team(owner)
    row = subscribe(client, team_id, owner, "pro")
    assert row.provider_subscription_id is not None
    gateway = get_gateway()
    business = plans.ensure_gateway_plan(gateway, plans.PLANS["business"])
    # Changed behind our back (the dashboard), and the webhooks never arrived.
    gateway.change_subscription_plan(
        row.provider_subscription_id, plan_id=business, idempotency_key=str(uuid.uuid4())
    )
    gateway.set_cancel_at_period_end(
        row.provider_subscription_id, True, idempotency_key=str(uuid.uuid4())
    )
    assert current(client, team_id, owner)["plan"]["name"] == "pro"

    job = reconciliation.start_reconciliation(names.SUBSCRIPTIONS_RECONCILE)
    assert job.queue == "payments" and job.args == {"date": date.today().isoformat()}
    done = wait_job(job.id, "succeeded")
    assert done.result is not None
    assert (done.result["checked"], done.result["changed"]) == (1, 1)

    found = current(client, team_id, owner)
    assert (found["plan"]["name"], found["cancel_at_period_end"], found["status"]) == (
        "business", True, "active",
    )  # fmt: skip
    synced = db.session.scalars(
        select(AuditLog).where(AuditLog.action == "subscription.updated").order_by(AuditLog.id)
    ).all()[-1]
    assert synced.actor_user_id is None  # the gateway's doing, not a user's
    assert synced.data["plan"] == {"from": "pro", "to": "business"}
    assert synced.data["cancel_at_period_end"] == {"from": False, "to": True}
    # Beat firing again the same day finds the day's job instead of queueing another.
    assert reconciliation.start_reconciliation(names.SUBSCRIPTIONS_RECONCILE).id == job.id


def test_a_past_due_subscription_gets_one_dunning_email_a_day(
    client: FlaskClient, worker: Worker, mailbox: Mailbox, settings: Settings
) -> None:
    owner = make_user(email="owner@example.com", name="Olga")
    admin = make_user(email="admin@example.com")
    member = make_user(email="member@example.com")
    team_id = make_team(owner, "Acme", members=[(admin, "admin"), (member, "member")])
    row = subscribe(client, team_id, owner, "pro")
    assert row.provider_customer_id and row.provider_subscription_id

    # The card on file starts declining, and the switch to yearly billing is charged at once.
    gateway = stripe_client(settings)
    failing = gateway.v1.payment_methods.attach(
        "pm_card_chargeCustomerFail", params={"customer": row.provider_customer_id}
    )
    gateway.v1.customers.update(
        row.provider_customer_id,
        params={"invoice_settings": {"default_payment_method": failing.id}},
    )
    url = subscription_url(team_id)
    finished(client, client.patch(url, json={"plan": "pro_yearly"}, headers=auth_headers(owner)))
    found = current(client, team_id, owner)
    assert (found["status"], found["plan"]["name"]) == ("past_due", "pro_yearly")
    assert found["effective_plan"] == "pro_yearly"  # a grace period while the gateway retries
    assert mailbox.to("owner@example.com") == []  # dunning is the daily job's business

    job = reconciliation.start_reconciliation(names.SUBSCRIPTIONS_RECONCILE)
    done = wait_job(job.id, "succeeded")
    assert done.result is not None
    assert (done.result["past_due"], done.result["dunned"]) == (1, 1)

    subject = "the payment for Acme's Pro (yearly) plan failed"
    to_owner = mailbox.wait_for("owner@example.com", subject)
    mailbox.wait_for("admin@example.com", subject)
    text = Mailbox.text_of(to_owner)
    assert "Hello Olga" in text and "190.00 USD" in text
    assert f"{settings.frontend_url}/teams/{team_id}/billing" in text

    # The same day again (a rerun, a second beat): nobody is emailed twice.
    again = reconciliation.reconcile_subscriptions(date.today(), get_gateway())
    assert (again["past_due"], again["dunned"]) == (1, 0)
    dunning_jobs = db.session.scalar(
        select(func.count()).select_from(Job)
        .where(Job.type == names.EMAIL_SEND, Job.args["template"].astext == "dunning")
    )  # fmt: skip
    assert dunning_jobs == 2  # owner and admin, once each; members cannot fix billing
    assert mailbox.to("member@example.com") == []
    assert len(mailbox.to("owner@example.com")) == 1
    assert "subscription.dunning_sent" in audit_actions(team_id)


def test_payments_reconcile_reports_what_differs_from_the_gateway(
    client: FlaskClient, worker: Worker
) -> None:
    operators = [make_user(admin=True), make_user(admin=True)]
    someone = make_user()
    team_id = make_team(someone)
    gateway = get_gateway()

    def charge_at_gateway(amount: int, metadata: dict[str, str]) -> str:
        created = gateway.create_payment(
            amount=amount, currency="USD", payment_method=VISA, description=None,
            metadata=metadata, idempotency_key=str(uuid.uuid4()),
        )  # fmt: skip
        confirmed = gateway.confirm_payment(created.id, idempotency_key=str(uuid.uuid4()))
        assert confirmed.status == PI_SUCCEEDED
        return confirmed.id

    # Ours and theirs agree.
    agreed = Payment(id=uuid.uuid4(), team_id=team_id, amount=500, currency="USD",
                     status="succeeded")  # fmt: skip
    agreed.provider_payment_id = charge_at_gateway(500, {"payment_id": str(agreed.id)})
    # We still think it is processing (its webhook was lost), and the amount disagrees.
    stale = Payment(id=uuid.uuid4(), team_id=team_id, amount=700, currency="USD",
                    status="processing")  # fmt: skip
    stale.provider_payment_id = charge_at_gateway(750, {"payment_id": str(stale.id)})
    # Ours points at an intent the gateway never had.
    ghost = Payment(team_id=team_id, amount=900, currency="USD", status="succeeded",
                    provider_payment_id=f"pi_missing_{uuid.uuid4().hex[:12]}")  # fmt: skip
    db.session.add_all([agreed, stale, ghost])
    db.session.commit()
    # Money taken at the gateway that we have no record of.
    stray = charge_at_gateway(1234, {"team_id": str(team_id)})

    # Tomorrow's early run, pretending the grace period has passed for all of these.
    job = reconciliation.start_reconciliation(
        names.PAYMENTS_RECONCILE,
        now=datetime.now(UTC) + reconciliation.PAYMENTS_GRACE + timedelta(minutes=1),
    )
    assert job.queue == "payments"
    done = wait_job(job.id, "succeeded")
    result = done.result
    assert result is not None
    day = result["date"]

    def ids(kind: str, key: str) -> set[str]:
        return {str(entry[key]) for entry in result[kind]}

    assert stray in ids("missing_here", "provider_payment_id")
    assert ids("missing_at_gateway", "payment_id") == {str(ghost.id)}
    assert ids("status_differs", "payment_id") == {str(stale.id)}
    assert ids("amount_differs", "payment_id") == {str(stale.id)}
    [amounts] = result["amount_differs"]
    assert (amounts["amount"], amounts["gateway_amount"]) == (700, 750)
    assert str(agreed.id) not in ids("status_differs", "payment_id") | ids(
        "amount_differs", "payment_id"
    )
    # localstripe serves the whole test run: other tests' charges are "missing here" too,
    # so that count is only bounded below.
    assert result["missing_here"] and result["checked"] >= 3

    [audit] = db.session.scalars(
        select(AuditLog).where(AuditLog.action == "payments.reconciled")
    ).all()
    assert audit.team_id is None
    assert audit.data["missing_at_gateway"] == 1 and audit.data["status_differs"] == 1
    assert audit.data["missing_here"] >= 1

    def notifications() -> list[Notification]:
        db.session.rollback()
        return list(
            db.session.scalars(
                select(Notification).where(Notification.event_key == f"reconcile:{day}")
            )
        )

    found = notifications()
    assert {n.user_id for n in found} == {u.id for u in operators}
    assert {n.category for n in found} == {"operations"}
    assert "mismatches" in found[0].title

    # Run again (a replayed job): still one notification per operator.
    reconciliation.reconcile_payments(
        day, datetime.fromisoformat(done.args["since"]),
        datetime.fromisoformat(done.args["until"]), gateway,
    )  # fmt: skip
    db.session.commit()
    assert len(notifications()) == 2


def test_deleting_a_team_stops_its_billing(client: FlaskClient, worker: Worker) -> None:
    owner = make_user()
    team_id = make_team(owner)
    row = subscribe(client, team_id, owner, "pro")
    assert row.provider_subscription_id is not None
    deleted = client.delete(f"/api/v1/teams/{team_id}", headers=auth_headers(owner))
    assert deleted.status_code == 202
    wait_job(deleted.get_json()["job"]["id"], "succeeded", describe=worker.describe)

    def cancelled_at_gateway() -> bool:
        return (
            get_gateway().get_subscription(str(row.provider_subscription_id)).cancel_at_period_end
        )

    assert wait_for(cancelled_at_gateway, 20, worker.describe)

    def ours_follows() -> bool:
        db.session.rollback()
        ours = db.session.get(Subscription, row.id, populate_existing=True)
        return ours is not None and ours.cancel_at_period_end

    assert wait_for(ours_follows, 20, worker.describe)  # the cancel job converged our row
