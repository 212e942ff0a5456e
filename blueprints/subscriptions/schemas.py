"""Plan and subscription bodies (money in integer minor units plus an ISO-4217 currency)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from blueprints.common.schemas import GatewayId, Strict
from blueprints.jobs.schemas import JobOut

SubscriptionStatus = Literal["incomplete", "trialing", "active", "past_due", "canceled", "unpaid"]


class LimitsOut(BaseModel):
    seats: int = Field(description="Members plus pending invitations the plan allows.")


class PlanOut(BaseModel):
    name: str
    display_name: str
    amount: int = Field(description="Price per interval in minor units of `currency`.")
    currency: str
    interval: Literal["month", "year"]
    limits: LimitsOut


class PlanPage(BaseModel):
    items: list[PlanOut]
    next_cursor: str | None = None  # every plan fits on one page


class SeatsOut(BaseModel):
    limit: int
    used: int = Field(description="Members plus pending invitations.")


class SubscriptionOut(BaseModel):
    id: uuid.UUID | None = Field(description="None while the team is on the free plan.")
    plan: PlanOut = Field(description="The plan subscribed to (free without a subscription).")
    effective_plan: str = Field(
        description="The plan whose limits apply now: the free plan's until the first "
        "payment went through (`incomplete`) or after the retries failed (`unpaid`)."
    )
    status: SubscriptionStatus
    cancel_at_period_end: bool
    current_period_end: datetime | None
    canceled_at: datetime | None
    seats: SeatsOut


class SubscriptionEnvelope(BaseModel):
    subscription: SubscriptionOut


class SubscriptionJobEnvelope(BaseModel):
    job: JobOut
    subscription: SubscriptionOut


class SubscribeIn(Strict):
    plan: str = Field(min_length=1, max_length=50, description="A paid plan's `name`.")
    payment_method: GatewayId = Field(description="The gateway's payment method id (pm_...).")


class PlanChangeIn(Strict):
    plan: str = Field(min_length=1, max_length=50, description="The paid plan to move to.")
