"""Daily reconciliation with the gateway: subscriptions converge, payments are compared.

Webhooks can be lost, delayed or rejected; these jobs catch up. Both are started once
per day by beat through `start_reconciliation` (a second beat, or a rerun, finds the
day's job instead of queueing another).

- `subscriptions.reconcile` re-reads every live subscription from the gateway and
  converges our row; a `past_due` one gets a dunning email to the members who manage
  billing, at most once per subscription and day (a Redis key, SET NX with a TTL).
- `payments.reconcile` compares our payments of a window with the gateway's and reports
  what differs (job result, a `payments.reconciled` audit row and, when something is off,
  an "operations" notification for every operator). It reports; it never "fixes" money.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, text
from sqlalchemy.dialects.postgresql import insert

from extensions import db, redis
from integrations.payments import (
    PI_CANCELED,
    PI_PROCESSING,
    PI_REQUIRES_ACTION,
    PI_REQUIRES_CONFIRMATION,
    PI_REQUIRES_PAYMENT_METHOD,
    PI_SUCCEEDED,
    GatewayPayment,
    GatewayRejected,
    PaymentGateway,
)
from logs import get_logger
from models import Job, Notification, Payment, Subscription, TeamMember, User
from services.billing.subscription_mirror import sync_from_gateway
from services.core import permissions
from services.core.audit import record_audit
from services.jobs import names
from services.jobs.outbox import enqueue
from services.messaging import mail

log = get_logger(__name__)

# Payments younger than this may still be in flight (charge job, webhook): tomorrow's run
# compares them once they have settled.
PAYMENTS_GRACE = timedelta(minutes=15)
# A day plus an hour: consecutive daily windows overlap, so a late beat leaves no gap.
PAYMENTS_WINDOW = timedelta(hours=25)
DUNNING_KEY_TTL = int(timedelta(hours=36).total_seconds())  # outlives its day; then expires
MAX_LISTED = 100  # mismatches listed per kind in the result; counts are always complete
# Our payment states each gateway state is consistent with.
_CONSISTENT: dict[str, frozenset[str]] = {
    PI_SUCCEEDED: frozenset({"succeeded", "partially_refunded", "refunded"}),
    PI_PROCESSING: frozenset({"processing"}),
    PI_REQUIRES_CONFIRMATION: frozenset({"pending", "processing"}),
    PI_REQUIRES_ACTION: frozenset({"requires_action"}),
    PI_CANCELED: frozenset({"canceled", "failed"}),
}


# Starting ---------------------------------------------------------------------------------


def start_reconciliation(task_name: str, *, now: datetime | None = None) -> Job:
    """Queue the day's `payments.reconcile` or `subscriptions.reconcile` job, or return the
    one already queued for that day (idempotent). One transaction."""
    now = now or datetime.now(UTC)
    if task_name == names.PAYMENTS_RECONCILE:
        until = now - PAYMENTS_GRACE
        args = {"date": until.date().isoformat(), "since": (until - PAYMENTS_WINDOW).isoformat(),
                "until": until.isoformat()}  # fmt: skip
    elif task_name == names.SUBSCRIPTIONS_RECONCILE:
        args = {"date": now.date().isoformat()}
    else:
        raise ValueError(f"not a reconciliation task: {task_name!r}")
    # Serialise starters of the same day, so two beats cannot both queue one.
    db.session.execute(
        text("SELECT pg_advisory_xact_lock(hashtext(:key))"),
        {"key": f"{task_name}:{args['date']}"},
    )
    existing = db.session.scalar(
        select(Job).where(Job.type == task_name, Job.args["date"].astext == args["date"])
    )
    if existing is not None:
        db.session.rollback()
        return existing
    job = enqueue(task_name, args=args)
    db.session.commit()
    return job


# Subscriptions ----------------------------------------------------------------------------


def reconcile_subscriptions(day: date, gateway: PaymentGateway) -> dict[str, Any]:
    """The `subscriptions.reconcile` job body (args: date); idempotent: converging twice
    changes nothing, and dunning emails are keyed by subscription and day.

    Commits after each subscription, so a gateway outage halfway keeps the progress made
    and the retry starts over harmlessly.
    """
    ids = list(
        db.session.scalars(
            select(Subscription.id)
            .where(Subscription.status != "canceled",
                   Subscription.provider_subscription_id.is_not(None))
            .order_by(Subscription.created_at)
        )
    )  # fmt: skip
    db.session.rollback()
    counts = {"checked": 0, "changed": 0, "unknown_at_gateway": 0, "past_due": 0, "dunned": 0}
    for subscription_id in ids:
        provider_id = db.session.scalar(
            select(Subscription.provider_subscription_id).where(Subscription.id == subscription_id)
        )
        if provider_id is None:
            continue
        try:
            found = gateway.get_subscription(provider_id)
        except GatewayRejected:
            # The gateway does not know it (deleted there, or another account's id).
            log.error("subscription_unknown_at_gateway", subscription_id=str(subscription_id))
            counts["unknown_at_gateway"] += 1
            db.session.rollback()
            continue
        before = db.session.execute(_STATE.where(Subscription.id == subscription_id)).one()
        subscription = sync_from_gateway(found)
        counts["checked"] += 1
        if subscription is not None and _state_of(subscription) != tuple(before):
            counts["changed"] += 1
        if subscription is not None and subscription.status == "past_due":
            counts["past_due"] += 1
            counts["dunned"] += _dun(subscription, day)
        db.session.commit()
    log.info("subscriptions_reconciled", day=day.isoformat(), **counts)
    return {"date": day.isoformat(), **counts}


_STATE = select(
    Subscription.status, Subscription.plan, Subscription.cancel_at_period_end,
    Subscription.current_period_end,
)  # fmt: skip


def _state_of(subscription: Subscription) -> tuple[Any, ...]:
    return (subscription.status, subscription.plan, subscription.cancel_at_period_end,
            subscription.current_period_end)  # fmt: skip


def _dun(subscription: Subscription, day: date) -> int:
    """Queue dunning emails for a past-due subscription unless it was dunned this day.

    The Redis key is taken first (at most once, even with two runs at a time) and given
    back if the emails could not be queued, so a failed run does not cost the day's email.
    """
    key = f"dunning:{subscription.id}:{day.isoformat()}"
    if not redis.client.set(key, "1", nx=True, ex=DUNNING_KEY_TTL):
        return 0
    try:
        recipients = _billing_managers(subscription.team_id)
        for member_id in recipients:
            mail.queue_email("dunning", member_id=member_id)
        record_audit(
            "subscription.dunning_sent", team_id=subscription.team_id,
            subject_type="subscription", subject_id=subscription.id,
            data={"recipients": len(recipients), "date": day.isoformat()},
        )  # fmt: skip
        db.session.commit()
    except Exception:
        redis.client.delete(key)
        raise
    return 1


def _billing_managers(team_id: uuid.UUID) -> list[uuid.UUID]:
    """Memberships of the team allowed to manage its subscription (owners, admins)."""
    members = db.session.execute(
        select(TeamMember.id, TeamMember.role).where(TeamMember.team_id == team_id)
    ).all()
    return [m.id for m in members if permissions.allows(m.role, "subscription.manage")]


# Payments ---------------------------------------------------------------------------------


@dataclass
class PaymentReport:
    missing_at_gateway: list[dict[str, Any]] = field(default_factory=list)
    missing_here: list[dict[str, Any]] = field(default_factory=list)
    status_differs: list[dict[str, Any]] = field(default_factory=list)
    amount_differs: list[dict[str, Any]] = field(default_factory=list)
    checked: int = 0

    def counts(self) -> dict[str, int]:
        return {
            "checked": self.checked,
            "missing_at_gateway": len(self.missing_at_gateway),
            "missing_here": len(self.missing_here),
            "status_differs": len(self.status_differs),
            "amount_differs": len(self.amount_differs),
        }

    @property
    def mismatches(self) -> int:
        return sum(v for k, v in self.counts().items() if k != "checked")


def reconcile_payments(
    day: str, since: datetime, until: datetime, gateway: PaymentGateway
) -> dict[str, Any]:
    """The `payments.reconcile` job body (args: date, since, until); idempotent: it only
    reads and reports, and its audit/notification rows commit with the job's success
    (notifications are unique per operator and day)."""
    report = compare_payments(since, until, gateway)
    counts = report.counts()
    record_audit(
        "payments.reconciled", subject_type="reconciliation", subject_id=day,
        data={"date": day, "since": since.isoformat(), "until": until.isoformat(), **counts},
    )  # fmt: skip
    if report.mismatches:
        _notify_operators(day, counts)
    log.info("payments_reconciled", day=day, **counts)
    return {
        "date": day,
        **counts,
        "missing_at_gateway": report.missing_at_gateway[:MAX_LISTED],
        "missing_here": report.missing_here[:MAX_LISTED],
        "status_differs": report.status_differs[:MAX_LISTED],
        "amount_differs": report.amount_differs[:MAX_LISTED],
    }


def compare_payments(since: datetime, until: datetime, gateway: PaymentGateway) -> PaymentReport:
    """Our payments created in [since, until) against the gateway's of the same window."""
    report = PaymentReport()
    ours = list(
        db.session.scalars(
            select(Payment).where(Payment.created_at >= since, Payment.created_at < until)
        )
    )
    by_provider_id = {p.provider_payment_id: p for p in ours if p.provider_payment_id}
    by_id = {str(p.id): p for p in ours}
    seen: set[uuid.UUID] = set()
    until_ts = until.timestamp()
    for theirs in gateway.list_payments(created_since=int(since.timestamp())):
        if theirs.created >= until_ts:
            continue
        report.checked += 1
        payment = by_provider_id.get(theirs.id) or by_id.get(theirs.metadata.get("payment_id", ""))
        if payment is None and theirs.invoice_id is not None:
            continue  # a subscription invoice's charge, not one of our payments
        # Created on our side just outside the window (clocks differ by a moment)?
        payment = payment or _find_payment(theirs)
        if payment is None:
            report.missing_here.append(_gateway_entry(theirs))
            continue
        seen.add(payment.id)
        _compare(payment, theirs, report)
    for payment in ours:
        if payment.id in seen:
            continue
        if payment.provider_payment_id is None:
            # Refused before reaching the gateway is fine; anything else never got there.
            if payment.status not in ("failed", "canceled"):
                report.missing_at_gateway.append(_our_entry(payment))
            continue
        try:
            theirs = gateway.get_payment(payment.provider_payment_id)  # outside the window?
        except GatewayRejected:
            report.missing_at_gateway.append(_our_entry(payment))
            continue
        report.checked += 1
        _compare(payment, theirs, report)
    return report


def _find_payment(theirs: GatewayPayment) -> Payment | None:
    condition = Payment.provider_payment_id == theirs.id
    our_id = _uuid_or_none(theirs.metadata.get("payment_id"))
    if our_id is not None:
        condition = or_(condition, Payment.id == our_id)
    return db.session.scalar(select(Payment).where(condition))


def _compare(payment: Payment, theirs: GatewayPayment, report: PaymentReport) -> None:
    if theirs.amount != payment.amount or theirs.currency.upper() != payment.currency:
        report.amount_differs.append(
            {**_our_entry(payment), "gateway_amount": theirs.amount,
             "gateway_currency": theirs.currency.upper()}
        )  # fmt: skip
    if not _consistent(payment.status, theirs):
        report.status_differs.append({**_our_entry(payment), "gateway_status": theirs.status})


def _consistent(ours: str, theirs: GatewayPayment) -> bool:
    if theirs.status == PI_REQUIRES_PAYMENT_METHOD:
        # Declined (a failure reason) or not yet given a card (still pending with us).
        return ours in (("failed",) if theirs.failure_reason else ("pending", "processing"))
    expected = _CONSISTENT.get(theirs.status)
    return expected is None or ours in expected  # an unknown gateway state is not judged


def _our_entry(payment: Payment) -> dict[str, Any]:
    return {
        "payment_id": str(payment.id), "team_id": str(payment.team_id),
        "provider_payment_id": payment.provider_payment_id, "status": payment.status,
        "amount": payment.amount, "currency": payment.currency,
    }  # fmt: skip


def _gateway_entry(theirs: GatewayPayment) -> dict[str, Any]:
    return {
        "provider_payment_id": theirs.id, "gateway_status": theirs.status,
        "amount": theirs.amount, "currency": theirs.currency.upper(),
        "metadata_payment_id": theirs.metadata.get("payment_id"),
    }  # fmt: skip


def _notify_operators(day: str, counts: dict[str, int]) -> None:
    """One "operations" notification per active operator; a rerun adds none (unique key).

    Inserted directly for now; the notifications service will take over the fan-out.
    """
    operators: Iterable[uuid.UUID] = db.session.scalars(
        select(User.id).where(User.is_admin, User.is_active, User.deleted_at.is_(None))
    ).all()
    mismatches = sum(v for k, v in counts.items() if k != "checked")
    rows = [
        {
            "id": uuid.uuid4(),
            "user_id": user_id,
            "team_id": None,
            "category": "operations",
            "event_key": f"reconcile:{day}",
            "title": f"Payments reconciliation for {day}: {mismatches} mismatches",
            "body": ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in counts.items()),
            "data": {"date": day, **counts},
        }
        for user_id in operators
    ]
    if rows:
        db.session.execute(
            insert(Notification)
            .values(rows)
            .on_conflict_do_nothing(index_elements=["user_id", "event_key"])
        )


def _uuid_or_none(value: str | None) -> uuid.UUID | None:
    try:
        return uuid.UUID(value) if value else None
    except ValueError:
        return None
