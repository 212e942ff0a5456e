"""The dashboard body (money in integer minor units plus an ISO-4217 currency)."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, Field

from blueprints.jobs.schemas import JobStatus
from blueprints.subscriptions.schemas import SubscriptionStatus


class MoneyOut(BaseModel):
    currency: str
    amount: int = Field(description="Gross captured amount in minor units (before refunds).")
    count: int = Field(description="Succeeded payments behind it.")


class RevenueOut(BaseModel):
    today: list[MoneyOut] = Field(description="Since 00:00 UTC, one entry per currency.")
    month: list[MoneyOut] = Field(description="Since the 1st of the month (UTC).")


class SubscriptionSummaryOut(BaseModel):
    plan: str = Field(description="The plan subscribed to; `free` without a subscription.")
    status: SubscriptionStatus | None = Field(description="None on the free plan.")
    cancel_at_period_end: bool
    current_period_end: datetime | None


class LowStockItemOut(BaseModel):
    id: uuid.UUID
    sku: str
    name: str
    quantity: int
    low_stock_threshold: int


class LowStockOut(BaseModel):
    count: int = Field(description="Active items at or below their low-stock threshold.")
    items: list[LowStockItemOut] = Field(description="The emptiest five of them.")


class RecentJobOut(BaseModel):
    id: uuid.UUID
    type: str
    status: JobStatus
    progress: int
    created_at: datetime


class DashboardOut(BaseModel):
    team_id: uuid.UUID
    generated_at: datetime = Field(
        description="When the team-wide figures were computed (they may come from a cache "
        "that every change of them invalidates)."
    )
    members: int
    revenue: RevenueOut | None = Field(description="Null unless your role may read payments.")
    transactions_today: int | None = Field(
        description="Payments succeeded today (UTC); null unless your role may read payments."
    )
    subscription: SubscriptionSummaryOut | None = Field(
        description="Null unless your role may read the subscription."
    )
    low_stock: LowStockOut
    recent_jobs: list[RecentJobOut] = Field(description="The team's five newest jobs.")
    unread_notifications: int = Field(description="Your own unread notifications.")
