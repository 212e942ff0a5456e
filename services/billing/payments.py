"""Payments: accept, charge once, converge to the gateway's truth (refunds: refunds.py).

Money is integer minor units everywhere. A payment is charged by the `payments.charge`
job in two gateway steps: create an UNCONFIRMED intent and commit its id, then confirm.
A redelivered job (worker killed mid-charge) finds the stored id and only reads the
intent's state, so at most one confirmation (one charge) can ever happen per payment,
even with a gateway that ignores idempotency keys. Webhooks and reconciliation call the
same `apply_payment_state`, which never moves a payment backwards.
"""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import current_app
from sqlalchemy import Select, func, select
from sqlalchemy.exc import IntegrityError

from extensions import db
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
from models import Job, Payment, User
from services.core.audit import record_audit
from services.core.errors import Conflict, Forbidden, NotFound, TooManyRequests, ValidationFailed
from services.core.pagination import Page, paginate
from services.insights import search
from services.jobs import names
from services.jobs.outbox import enqueue
from services.messaging.mail import format_money, queue_email
from services.messaging.notifications import notify

# States a payment never leaves through the gateway (refund states move only via refunds).
SETTLED = frozenset({"succeeded", "failed", "canceled", "partially_refunded", "refunded"})


def create_payment(
    user: User,
    team_id: uuid.UUID,
    *,
    amount: int,
    currency: str,
    description: str | None,
    payment_method: str,
    idempotency_key: str,
) -> tuple[Payment, Job]:
    """Record a pending payment and queue its charge. One transaction.

    Refused (nothing written) for an account whose email is not verified and for a team
    whose payments keep failing (`_refuse_while_failing`): a throwaway account testing
    stolen cards gets neither.
    """
    if user.email_verified_at is None:
        raise Forbidden("Verify your email address before taking payments.")
    _refuse_while_failing(team_id)
    currency = currency.upper()
    if currency not in current_app.config["SETTINGS"].currency_allow_list:
        raise ValidationFailed(
            "This currency is not accepted.", errors={"currency": ["Not an accepted currency."]}
        )
    payment = Payment(
        id=uuid.uuid4(), team_id=team_id, created_by_id=user.id, amount=amount,
        currency=currency, description=description, payment_method=payment_method,
        status="pending", idempotency_key=idempotency_key,
    )  # fmt: skip
    db.session.add(payment)
    try:
        db.session.flush()
    except IntegrityError:
        db.session.rollback()
        return _same_payment_again(payment)
    job = enqueue(names.PAYMENTS_CHARGE, args={"payment_id": str(payment.id)}, user_id=user.id,
                  team_id=team_id, max_attempts=max_attempts())  # fmt: skip
    record_audit("payment.created", actor_id=user.id, team_id=team_id, subject_type="payment",
                 subject_id=payment.id, data={"amount": amount, "currency": currency})  # fmt: skip
    # Indexed in this transaction (not by a task after commit): atomic, cheap for one row.
    search.index_document(team_id, "payment", payment.id, description or "Payment",
                          f"{amount} {currency} {payment.status}")  # fmt: skip
    db.session.commit()
    return payment, job


def _same_payment_again(asked: Payment) -> tuple[Payment, Job]:
    """The payment this team already took under the same Idempotency-Key, with its charge.

    The API's idempotency record normally replays the first answer; it is written after
    the payment's commit, so a crash (or a database restart) in between leaves a payment
    without a stored answer, and the client's retry arrives here. The same request gets
    the same payment and job back (no second charge); another request under that key is a
    conflict.
    """
    existing = db.session.scalar(
        select(Payment).where(Payment.team_id == asked.team_id,
                              Payment.idempotency_key == asked.idempotency_key)
    )  # fmt: skip
    if existing is None or (
        (existing.amount, existing.currency, existing.payment_method, existing.description)
        != (asked.amount, asked.currency, asked.payment_method, asked.description)
    ):
        raise Conflict("A payment with this Idempotency-Key already exists.")
    job = db.session.scalar(
        select(Job).where(Job.type == names.PAYMENTS_CHARGE,
                          Job.args["payment_id"].astext == str(existing.id))
        .order_by(Job.created_at).limit(1)
    )  # fmt: skip
    if job is None:
        raise Conflict("A payment with this Idempotency-Key already exists.")
    return existing, job


def _refuse_while_failing(team_id: uuid.UUID) -> None:
    """429 while the team has PAYMENTS_FAILED_LIMIT failed payments within the window.

    Counted from the payments themselves (an index on the team's failed ones), not from a
    counter the charge job bumps: durable, exact under concurrency and redeliveries, and
    nothing to keep in step. `failed` is final, so `updated_at` is when it failed. The
    block lifts when the oldest of the last LIMIT failures leaves the window, which is
    what Retry-After says.
    """
    settings = current_app.config["SETTINGS"]
    window = timedelta(seconds=settings.payments_failed_window_seconds)
    recent = (
        select(Payment.updated_at.label("failed_at"))
        .where(Payment.team_id == team_id, Payment.status == "failed",
               Payment.updated_at > func.now() - window)
        .order_by(Payment.updated_at.desc())
        .limit(settings.payments_failed_limit)
        .subquery()
    )  # fmt: skip
    lifts_at = func.min(recent.c.failed_at) + window
    failures, seconds_left = db.session.execute(
        select(func.count(), func.extract("epoch", lifts_at - func.now()))
    ).one()
    if failures >= settings.payments_failed_limit:
        seconds = settings.payments_failed_window_seconds
        span = f"{seconds // 60} minutes" if seconds % 60 == 0 else f"{seconds} seconds"
        raise TooManyRequests(
            f"{failures} of this team's payments failed within {span}; new payments are"
            " paused until Retry-After.",
            retry_after=math.ceil(float(seconds_left or 1)),
        )


def max_attempts() -> int:
    """Attempts of a charge or refund job: enough to outlast a gateway outage."""
    return int(current_app.config["SETTINGS"].payments_max_attempts)


def get_payment(team_id: uuid.UUID, payment_id: uuid.UUID) -> Payment:
    payment = db.session.get(Payment, payment_id)
    if payment is None or payment.team_id != team_id:
        raise NotFound("No such payment.")
    return payment


def list_payments(
    team_id: uuid.UUID,
    *,
    status: str | None,
    created_from: datetime | None,
    created_to: datetime | None,
    limit: int,
    cursor: str | None,
) -> Page[Payment]:
    """The team's payments, newest first, filtered by status and creation time."""
    query: Select[Payment] = select(Payment).where(Payment.team_id == team_id)
    if status:
        query = query.where(Payment.status == status)
    if created_from:
        query = query.where(Payment.created_at >= created_from)
    if created_to:
        query = query.where(Payment.created_at < created_to)
    return paginate(query, Payment, limit, cursor)


def charge(payment_id: uuid.UUID, gateway: PaymentGateway) -> dict[str, Any]:
    """The `payments.charge` job body; safe to run any number of times for one payment."""
    payment = _locked_payment(payment_id)
    if payment is None or payment.status in SETTLED:
        return {"status": payment.status if payment else "missing"}
    try:
        intent = _create_and_confirm(payment, gateway)
    except GatewayRejected as exc:
        # The gateway will never accept this request (bad payment method, invalid
        # parameters): the payment fails with the reason instead of retrying forever.
        db.session.rollback()
        payment = _locked_payment(payment_id)
        assert payment is not None
        _fail(payment, str(exc))
        return {"status": payment.status}
    payment = _locked_payment(payment_id)
    assert payment is not None
    apply_payment_state(payment, intent)
    return {"status": payment.status, "provider_payment_id": intent.id}


def _create_and_confirm(payment: Payment, gateway: PaymentGateway) -> GatewayPayment:
    payment_id = payment.id
    if payment.provider_payment_id is None:
        intent = gateway.create_payment(
            amount=payment.amount, currency=payment.currency,
            payment_method=payment.payment_method or "", description=payment.description,
            metadata={"payment_id": str(payment.id), "team_id": str(payment.team_id)},
            idempotency_key=f"payment-{payment.id}-create",
        )  # fmt: skip
        payment.provider_payment_id, payment.status = intent.id, "processing"
        # Checkpoint: once this id is committed, no retry can create a second intent.
        db.session.commit()
        locked = _locked_payment(payment_id)
        assert locked is not None and locked.provider_payment_id is not None
        payment = locked
    assert payment.provider_payment_id is not None
    intent = gateway.get_payment(payment.provider_payment_id)
    if intent.status == PI_REQUIRES_CONFIRMATION or (
        intent.status == PI_REQUIRES_PAYMENT_METHOD and intent.failure_reason is None
    ):
        intent = gateway.confirm_payment(intent.id, idempotency_key=f"payment-{payment.id}-confirm")
    return intent


def _notify_payer(payment: Payment) -> None:
    if payment.created_by_id is None:
        return
    data = {
        "amount": format_money(payment.amount, payment.currency), "team_id": str(payment.team_id),
        "payment_id": str(payment.id), "description": payment.description or "The payment",
        "reason": payment.failure_reason or "",
    }  # fmt: skip
    # A success already mails a receipt; a failure is worth an email of its own.
    notify([payment.created_by_id], f"payment_{payment.status}", data,
           event_key=f"payment:{payment.id}:{payment.status}", team_id=payment.team_id,
           email=payment.status == "failed")  # fmt: skip


def _fail(payment: Payment, reason: str) -> None:
    before, payment.status, payment.failure_reason = payment.status, "failed", reason[:1000]
    _notify_payer(payment)
    record_audit(
        "payment.failed", team_id=payment.team_id, subject_type="payment", subject_id=payment.id,
        data={"status": {"from": before, "to": "failed"}, "reason": payment.failure_reason},
    )  # fmt: skip


def _locked_payment(payment_id: uuid.UUID) -> Payment | None:
    return db.session.scalar(
        select(Payment).where(Payment.id == payment_id).with_for_update()
        .execution_options(populate_existing=True)
    )  # fmt: skip


def apply_payment_state(payment: Payment, intent: GatewayPayment) -> bool:
    """Move our payment to the gateway's state (never backwards); True if it changed."""
    if payment.status in SETTLED:
        return False
    if intent.status == PI_SUCCEEDED:
        new_status = "succeeded"
    elif intent.status == PI_REQUIRES_PAYMENT_METHOD and intent.failure_reason:
        new_status = "failed"
    elif intent.status == PI_REQUIRES_ACTION:
        new_status = "requires_action"
    elif intent.status == PI_CANCELED:
        new_status = "canceled"
    elif intent.status in (PI_PROCESSING, PI_REQUIRES_CONFIRMATION):
        new_status = "processing"
    else:
        return False
    if new_status == payment.status:
        return False
    before = payment.status
    payment.status = new_status
    payment.provider_payment_id = payment.provider_payment_id or intent.id
    if new_status == "succeeded":
        payment.succeeded_at = datetime.now(UTC)
        queue_email("payment_receipt", payment_id=payment.id)
    if new_status == "failed":
        payment.failure_reason = intent.failure_reason
    if new_status in ("succeeded", "failed"):
        _notify_payer(payment)
    record_audit(
        f"payment.{new_status}", team_id=payment.team_id, subject_type="payment",
        subject_id=payment.id,
        data={"status": {"from": before, "to": new_status}, "reason": payment.failure_reason},
    )  # fmt: skip
    return True
