"""Subscriptions against the gateway: reconciliation, dunning emails, payment
reconciliation reports, and billing stopping with the team.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta

import stripe
from flask.testing import FlaskClient
from sqlalchemy import func, select

from config import Settings
from extensions import db
from integrations.payments import PI_SUCCEEDED
from integrations.stripe_gateway import get_gateway
from models import AuditLog, Job, Notification, Payment, Subscription
from services.billing import reconciliation
from services.core import plans
from services.jobs import names
from tests.blueprints.subscriptions.helpers import (
    VISA,
    audit_actions,
    current,
    finished,
    subscribe,
    subscription_url,
)
from tests.factories import (
    auth_headers,
    make_team,
    make_user,
)
from tests.support import Mailbox, Worker, wait_for, wait_job


def stripe_client(settings: Settings) -> stripe.StripeClient:
    """Straight to the gateway, as someone using its dashboard would."""
    return stripe.StripeClient(
        settings.stripe_secret_key, base_addresses={"api": settings.stripe_api_base}
    )


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
