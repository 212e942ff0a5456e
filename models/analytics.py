"""Analytics: raw events as ingested, the rollups derived from them, and the watermark.

Incremental aggregation needs to know which events it has not read yet. An identity id or
`created_at` cannot tell: ids are drawn when a row is inserted, not when it commits, so a
slow batch can commit an id *below* one already aggregated and be skipped for ever. Each
event therefore records the id of the transaction that wrote it (`ingest_xid`, PostgreSQL's
64-bit `xid8`), and the aggregator reads only the transactions between its watermark and
the oldest one still running (`pg_snapshot_xmin`), so every committed event is read once.
A team's on-demand run folds only that team's events and records how far it got in a
watermark of the team's own, which the all-teams run respects.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    ForeignKey,
    Identity,
    Index,
    PrimaryKeyConstraint,
    String,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql.base import ischema_names
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import UserDefinedType

from models.base import Base, Timestamps, one_of

INTERVALS = ("hour", "day")


class Xid8(UserDefinedType[str]):
    """PostgreSQL's 64-bit transaction id (compared in SQL only; read back as text)."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "xid8"


ischema_names["xid8"] = Xid8  # so reflection (Alembic's comparison) knows the type


class AnalyticsEvent(Base):
    """Append-only and high volume: no `updated_at` churn, a bigint identity key."""

    __tablename__ = "analytics_events"
    __table_args__ = (
        # Duplicates by client dedup id are ignored (NULLs never collide).
        UniqueConstraint("team_id", "dedup_id"),
        Index("ix_analytics_events_team_name_occurred", "team_id", "name", "occurred_at"),
        Index("ix_analytics_events_ingest_xid", "ingest_xid"),
        # A team's on-demand run reads only its own new transactions.
        Index("ix_analytics_events_team_xid", "team_id", "ingest_xid"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    team_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    occurred_at: Mapped[datetime]
    properties: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")
    dedup_id: Mapped[str | None] = mapped_column(String(100))
    # Set by the database: the writing transaction, for the aggregation watermark.
    ingest_xid: Mapped[str] = mapped_column(
        Xid8(), server_default=text("pg_current_xact_id()"), deferred=True
    )
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())


class AnalyticsRollup(Timestamps, Base):
    """One metric's value for one team in one hour or day (UTC buckets).

    Counts and sums are stored for both intervals; day rows of distinct counts (active
    users) are computed from the source, never added up from hours.
    """

    __tablename__ = "analytics_rollups"
    __table_args__ = (
        PrimaryKeyConstraint("team_id", "name", "interval", "bucket"),
        one_of("interval", INTERVALS),
    )

    # No foreign key: derived data written in bulk (a per-row check against teams cost a
    # fifth of a full aggregation). Deleting a team deletes its rollups explicitly
    # (`services.insights.aggregation.forget_team`) and runs skip deleted teams.
    team_id: Mapped[uuid.UUID]
    name: Mapped[str] = mapped_column(String(100))
    interval: Mapped[str] = mapped_column(String(4))
    bucket: Mapped[datetime]
    value: Mapped[int] = mapped_column(BigInteger)


class AnalyticsWatermark(Timestamps, Base):
    """How far a source has been aggregated: every transaction below `xid` is folded in."""

    __tablename__ = "analytics_watermarks"

    source: Mapped[str] = mapped_column(String(50), primary_key=True)
    xid: Mapped[int] = mapped_column(BigInteger)


class AnalyticsTeamWatermark(Timestamps, Base):
    """How far one team's on-demand runs folded its events beyond the global watermark:
    every transaction of this team below `xid` is folded in. The all-teams run skips those
    events and deletes the rows its own watermark has overtaken, so the table only holds
    teams that ran on demand since the last hourly run."""

    __tablename__ = "analytics_team_watermarks"

    team_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("teams.id", ondelete="CASCADE"), primary_key=True
    )
    xid: Mapped[int] = mapped_column(BigInteger)
