"""Gateway webhooks: store each event once, then converge our state to the gateway's.

The endpoint only verifies and records (fast, so the gateway does not time out and
retry); the `webhooks.process` job does the work. Processing never trusts the event's
copy of the object: it fetches the current object from the gateway, so duplicates and
out-of-order deliveries all lead to the same, latest state.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert

from extensions import db
from integrations.payments import GatewayEvent as GatewayEventData
from integrations.payments import PaymentGateway
from logs import get_logger
from models import GatewayEvent, Payment, Refund
from services.billing.payments import apply_payment_state
from services.billing.refunds import apply_refund_state
from services.billing.subscription_mirror import sync_from_gateway
from services.jobs import names
from services.jobs.outbox import enqueue

log = get_logger(__name__)


def record_event(event: GatewayEventData) -> bool:
    """Store a verified event and queue its processing; False for a duplicate. One transaction."""
    inserted = db.session.execute(
        insert(GatewayEvent)
        .values(id=event.id, type=event.type, payload=event.payload)
        .on_conflict_do_nothing(index_elements=["id"])
        .returning(GatewayEvent.id)
    ).scalar()
    if inserted is None:
        db.session.rollback()
        return False
    enqueue(names.WEBHOOKS_PROCESS, args={"event_id": event.id})
    db.session.commit()
    return True


def process_event(event_id: str, gateway: PaymentGateway) -> dict[str, Any]:
    """The `webhooks.process` job body; idempotent (a processed event is skipped)."""
    event = db.session.scalar(
        select(GatewayEvent).where(GatewayEvent.id == event_id).with_for_update()
    )
    if event is None or event.processed_at is not None:
        return {"skipped": True}
    data = event.payload.get("data", {}).get("object", {})
    object_type = str(data.get("object", ""))
    outcome = "ignored"
    if object_type == "payment_intent":
        outcome = _converge_payment(str(data["id"]), gateway)
    elif object_type in ("charge", "refund"):
        intent_id = data.get("payment_intent")
        outcome = _converge_refunds(str(intent_id), gateway) if intent_id else "ignored"
    elif object_type == "subscription":
        found = sync_from_gateway(gateway.get_subscription(str(data["id"])))
        outcome = "converged" if found is not None else "unknown subscription"
    event.processed_at = datetime.now(UTC)
    log.info("gateway_event_processed", event_id=event_id, type=event.type, outcome=outcome)
    return {"type": event.type, "outcome": outcome}


def _converge_payment(intent_id: str, gateway: PaymentGateway) -> str:
    intent = gateway.get_payment(intent_id)
    payment = db.session.scalar(
        select(Payment).where(Payment.provider_payment_id == intent_id).with_for_update()
    )
    if payment is None and intent.metadata.get("payment_id"):
        # Our charge job died between creating the intent and committing its id.
        payment = db.session.scalar(
            select(Payment).where(Payment.id == intent.metadata["payment_id"]).with_for_update()
        )
    if payment is None:
        return "unknown payment"
    return "converged" if apply_payment_state(payment, intent) else "unchanged"


def _converge_refunds(intent_id: str, gateway: PaymentGateway) -> str:
    payment = db.session.scalar(
        select(Payment).where(Payment.provider_payment_id == intent_id).with_for_update()
    )
    if payment is None:
        return "unknown payment"
    changed = 0
    for found in gateway.list_refunds(payment_id=intent_id):
        row = db.session.scalar(
            select(Refund)
            .where(
                (Refund.provider_refund_id == found.id)
                | (Refund.id == _uuid_or_none(found.metadata.get("refund_id")))
            )
            .with_for_update()
        )
        if row is not None and apply_refund_state(row, payment, found):
            changed += 1
    return f"{changed} refunds converged"


def _uuid_or_none(value: str | None) -> uuid.UUID | None:
    try:
        return uuid.UUID(value) if value else None
    except ValueError:
        return None
