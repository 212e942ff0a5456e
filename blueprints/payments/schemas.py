"""Payment and refund bodies (money in integer minor units plus an ISO-4217 currency)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import AwareDatetime, BaseModel, Field

from blueprints.common.schemas import GatewayAmount, GatewayId, ListQuery, Strict
from blueprints.jobs.schemas import JobOut

PaymentStatus = Literal[
    "pending", "processing", "requires_action", "succeeded", "failed", "canceled",
    "partially_refunded", "refunded",
]  # fmt: skip


class PaymentIn(Strict):
    amount: GatewayAmount = Field(description="Minor units, e.g. cents.")
    currency: str = Field(pattern=r"^[A-Za-z]{3}$", description="ISO-4217, e.g. USD.")
    description: str | None = Field(None, max_length=500)
    payment_method: GatewayId


class RefundIn(Strict):
    amount: GatewayAmount | None = Field(None, description="Minor units; omit for the rest.")
    reason: str | None = Field(None, max_length=255)


class RefundOut(BaseModel):
    id: uuid.UUID
    payment_id: uuid.UUID
    amount: int
    status: Literal["pending", "succeeded", "failed", "canceled"]
    reason: str | None
    failure_reason: str | None
    created_at: datetime


class PaymentOut(BaseModel):
    id: uuid.UUID
    team_id: uuid.UUID
    amount: int
    amount_refunded: int
    currency: str
    description: str | None
    status: PaymentStatus
    failure_reason: str | None
    created_at: datetime
    succeeded_at: datetime | None


class PaymentDetail(PaymentOut):
    refunds: list[RefundOut]


class PaymentEnvelope(BaseModel):
    payment: PaymentDetail


class PaymentAccepted(BaseModel):
    job: JobOut
    payment: PaymentOut


class RefundAccepted(BaseModel):
    job: JobOut
    refund: RefundOut


class PaymentPage(BaseModel):
    items: list[PaymentOut]
    next_cursor: str | None


class PaymentListQuery(ListQuery):
    status: PaymentStatus | None = None
    from_: AwareDatetime | None = Field(None, alias="from")
    to: AwareDatetime | None = None


class WebhookReceived(BaseModel):
    received: bool = True
    duplicate: bool
