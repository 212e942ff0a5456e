"""Scheduled reports: one row per team, kind and period, so a period is reported once."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any

from sqlalchemy import ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, Timestamps, UUIDPrimaryKey, one_of

KINDS = ("daily", "weekly")


class Report(UUIDPrimaryKey, Timestamps, Base):
    """Created by the beat job with ON CONFLICT DO NOTHING: a second beat (or a backlog of
    ticks) finds the period's row already there and queues nothing."""

    __tablename__ = "reports"
    __table_args__ = (UniqueConstraint("team_id", "kind", "period_start"), one_of("kind", KINDS))

    team_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(10))
    period_start: Mapped[date]
    period_end: Mapped[date]  # exclusive
    job_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    figures: Mapped[dict[str, Any] | None]
    # User ids already mailed (as strings): a retried job skips them.
    delivered_to: Mapped[list[str]] = mapped_column(default=list, server_default="[]")
    sent_at: Mapped[datetime | None]
