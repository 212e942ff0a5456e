"""Refunds: give back (part of) a succeeded payment, never more than was captured.

A request records a pending refund and queues the `payments.refund` job; the job finds an
earlier gateway refund by its tag before creating one, so a crash between the gateway's
refund and our commit never refunds twice. Webhooks call the same `apply_refund_state`,
which moves a refund (and its payment's refunded total) once.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from extensions import db
from integrations.payments import GatewayRefund, PaymentGateway
from models import Job, Payment, Refund, User
from services.billing.payments import max_attempts
from services.core.audit import record_audit
from services.core.errors import Conflict, NotFound, ValidationFailed
from services.jobs import names
from services.jobs.outbox import enqueue

REFUNDABLE = frozenset({"succeeded", "partially_refunded"})


def list_refunds(payment: Payment) -> list[Refund]:
    return list(
        db.session.scalars(
            select(Refund).where(Refund.payment_id == payment.id).order_by(Refund.created_at)
        )
    )


def create_refund(
    user: User,
    team_id: uuid.UUID,
    payment_id: uuid.UUID,
    *,
    amount: int | None,
    reason: str | None,
    idempotency_key: str,
) -> tuple[Refund, Job]:
    """Record a pending refund (never beyond what was captured) and queue it. One transaction."""
    payment = db.session.scalar(
        select(Payment)
        .where(Payment.id == payment_id, Payment.team_id == team_id)
        .with_for_update()
    )
    if payment is None:
        raise NotFound("No such payment.")
    if payment.status not in REFUNDABLE:
        raise Conflict(f"Only a succeeded payment can be refunded (this one is {payment.status}).")
    pending = db.session.scalar(
        select(func.coalesce(func.sum(Refund.amount), 0)).where(
            Refund.payment_id == payment.id, Refund.status == "pending"
        )
    )
    refundable = payment.amount - payment.amount_refunded - int(pending or 0)
    amount = refundable if amount is None else amount
    if amount <= 0 or amount > refundable:
        raise ValidationFailed(
            f"At most {refundable} ({payment.currency} minor units) can still be refunded.",
            errors={"amount": [f"Must be between 1 and {refundable}."]},
        )
    refund = Refund(
        id=uuid.uuid4(), payment_id=payment.id, team_id=team_id, created_by_id=user.id,
        amount=amount, reason=reason, status="pending", idempotency_key=idempotency_key,
    )  # fmt: skip
    db.session.add(refund)
    try:
        db.session.flush()
    except IntegrityError:
        db.session.rollback()
        raise Conflict("A refund with this Idempotency-Key already exists.") from None
    job = enqueue(names.PAYMENTS_REFUND, args={"refund_id": str(refund.id)}, user_id=user.id,
                  team_id=team_id, max_attempts=max_attempts())  # fmt: skip
    record_audit("refund.created", actor_id=user.id, team_id=team_id, subject_type="refund",
                 subject_id=refund.id,
                 data={"payment_id": str(payment.id), "amount": amount})  # fmt: skip
    db.session.commit()
    return refund, job


def refund(refund_id: uuid.UUID, gateway: PaymentGateway) -> dict[str, Any]:
    """The `payments.refund` job body; idempotent (finds an earlier gateway refund by tag)."""
    row = db.session.scalar(select(Refund).where(Refund.id == refund_id).with_for_update())
    if row is None or row.status != "pending":
        return {"status": row.status if row else "missing"}
    payment = db.session.scalar(
        select(Payment).where(Payment.id == row.payment_id).with_for_update()
    )
    assert payment is not None and payment.provider_payment_id is not None
    found: GatewayRefund | None = None
    if row.provider_refund_id is None:
        # A crash after the gateway refunded but before we committed must not refund twice.
        earlier = [
            r for r in gateway.list_refunds(payment_id=payment.provider_payment_id)
            if r.metadata.get("refund_id") == str(row.id)
        ]  # fmt: skip
        found = earlier[0] if earlier else gateway.create_refund(
            payment_id=payment.provider_payment_id, amount=row.amount,
            metadata={"refund_id": str(row.id)}, idempotency_key=f"refund-{row.id}",
        )  # fmt: skip
    else:
        found = next(
            (r for r in gateway.list_refunds(payment_id=payment.provider_payment_id)
             if r.id == row.provider_refund_id), None,
        )  # fmt: skip
    if found is not None:
        apply_refund_state(row, payment, found)
    return {"status": row.status, "provider_refund_id": row.provider_refund_id}


def apply_refund_state(row: Refund, payment: Payment, found: GatewayRefund) -> bool:
    """Move a refund (and its payment's refunded total) to the gateway's state, once."""
    row.provider_refund_id = row.provider_refund_id or found.id
    if row.status != "pending" or found.status == "pending":
        return False
    before = row.status
    if found.status == "succeeded":
        row.status = "succeeded"
        payment.amount_refunded += row.amount
        payment.status = (
            "refunded" if payment.amount_refunded >= payment.amount else "partially_refunded"
        )
    else:
        row.status = "failed" if found.status == "failed" else "canceled"
        row.failure_reason = found.failure_reason
    record_audit(
        f"refund.{row.status}", team_id=row.team_id, subject_type="refund", subject_id=row.id,
        data={"status": {"from": before, "to": row.status}, "amount": row.amount,
              "payment_refunded": payment.amount_refunded},
    )  # fmt: skip
    return True
