"""Money: one-off payments and team subscriptions (amounts in integer minor units)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, String, Text, UniqueConstraint
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


class Subscription(UUIDPrimaryKey, Timestamps, Base):
    __tablename__ = "subscriptions"
    __table_args__ = (one_of("status", SUBSCRIPTION_STATUSES),)

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
