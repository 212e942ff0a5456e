"""Raw analytics events as ingested (rollups are derived from these)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Identity, Index, String, UniqueConstraint, func
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base


class AnalyticsEvent(Base):
    """Append-only and high volume: no `updated_at` churn, a bigint identity key."""

    __tablename__ = "analytics_events"
    __table_args__ = (
        # Duplicates by client dedup id are ignored (NULLs never collide).
        UniqueConstraint("team_id", "dedup_id"),
        Index("ix_analytics_events_team_name_occurred", "team_id", "name", "occurred_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    team_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    occurred_at: Mapped[datetime]
    properties: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")
    dedup_id: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())
