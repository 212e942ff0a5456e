"""Money: one-off payments and team subscriptions (amounts in integer minor units)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, Timestamps, UUIDPrimaryKey, non_negative, one_of

PAYMENT_STATUSES = (
    "pending",
    "processing",
    "requires_action",
    "succeeded",
    "failed",
    "canceled",
    "partially_refunded",
    "refunded",
)
SUBSCRIPTION_STATUSES = (
    "incomplete",
    "trialing",
    "active",
    "past_due",
    "canceled",
    "unpaid",
)


class Payment(UUIDPrimaryKey, Timestamps, Base):
    __tablename__ = "payments"
    __table_args__ = (
        one_of("status", PAYMENT_STATUSES),
        CheckConstraint("amount > 0", name="amount_positive"),
        non_negative("amount_refunded"),
        CheckConstraint("amount_refunded <= amount", name="refund_within_amount"),
        CheckConstraint("currency ~ '^[A-Z]{3}$'", name="currency_iso4217"),
        # The same client key can never create two payments for one team.
        UniqueConstraint("team_id", "idempotency_key"),
        # Analytics built-ins and the dashboard: payments captured in a time window.
        Index(
            "ix_payments_succeeded",
            "succeeded_at",
            postgresql_where=text("succeeded_at IS NOT NULL"),
        ),
        # A team's revenue today / this month (the dashboard).
        Index(
            "ix_payments_team_succeeded",
            "team_id",
            "succeeded_at",
            postgresql_where=text("succeeded_at IS NOT NULL"),
        ),
        # The failed-payment velocity limit: a team's failures in the last minutes
        # (`failed` is final, so `updated_at` is when it failed).
        Index(
            "ix_payments_team_failed",
            "team_id",
            "updated_at",
            postgresql_where=text("status = 'failed'"),
        ),
    )

    team_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("teams.id", ondelete="RESTRICT"), index=True
    )
    created_by_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL")
    )
    amount: Mapped[int] = mapped_column(BigInteger)
    amount_refunded: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    currency: Mapped[str] = mapped_column(String(3))
    description: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20), default="pending", server_default="pending")
    payment_method: Mapped[str | None] = mapped_column(String(255))
    provider_payment_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    failure_reason: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    succeeded_at: Mapped[datetime | None]


REFUND_STATUSES = ("pending", "succeeded", "failed", "canceled")


class Refund(UUIDPrimaryKey, Timestamps, Base):
    """A full or partial refund of one payment; never more than what was captured."""

    __tablename__ = "refunds"
    __table_args__ = (
        one_of("status", REFUND_STATUSES),
        CheckConstraint("amount > 0", name="amount_positive"),
        UniqueConstraint("payment_id", "idempotency_key"),
    )

    payment_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("payments.id", ondelete="RESTRICT"), index=True
    )
    team_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("teams.id", ondelete="RESTRICT"))
    created_by_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL")
    )
    amount: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(20), default="pending", server_default="pending")
    provider_refund_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    failure_reason: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))


class GatewayEvent(Base):
    """A webhook event from the payment gateway, stored once by its id (duplicates ignored)."""

    __tablename__ = "gateway_events"
    __table_args__ = (Index("ix_gateway_events_unprocessed", "received_at",
                            postgresql_where=text("processed_at IS NULL")),)  # fmt: skip

    id: Mapped[str] = mapped_column(String(255), primary_key=True)  # the gateway's event id
    provider: Mapped[str] = mapped_column(String(20), default="stripe", server_default="stripe")
    type: Mapped[str] = mapped_column(String(100))
    payload: Mapped[dict[str, Any]]
    received_at: Mapped[datetime] = mapped_column(server_default=func.now())
    processed_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())


class Subscription(UUIDPrimaryKey, Timestamps, Base):
    __tablename__ = "subscriptions"
    __table_args__ = (
        one_of("status", SUBSCRIPTION_STATUSES),
        # At most one subscription per team that is not over.
        Index("uq_subscriptions_team_live", "team_id", unique=True,
              postgresql_where=text("status <> 'canceled'")),
    )  # fmt: skip

    team_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("teams.id", ondelete="RESTRICT"), index=True
    )
    plan: Mapped[str] = mapped_column(String(50))
    status: Mapped[str] = mapped_column(String(20))
    provider_customer_id: Mapped[str | None] = mapped_column(String(255))
    provider_subscription_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    current_period_end: Mapped[datetime | None]
    cancel_at_period_end: Mapped[bool] = mapped_column(default=False, server_default="false")
    canceled_at: Mapped[datetime | None]
