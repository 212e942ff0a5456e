"""Exports: a team's data written to a file in object storage by a job."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, Timestamps, UUIDPrimaryKey, non_negative, one_of

EXPORT_RESOURCES = ("payments", "inventory", "audit_logs", "analytics", "members")
EXPORT_FORMATS = ("csv", "jsonl", "xlsx")


class Export(UUIDPrimaryKey, Timestamps, Base):
    __tablename__ = "exports"
    __table_args__ = (
        one_of("resource", EXPORT_RESOURCES),
        one_of("format", EXPORT_FORMATS),
        non_negative("row_count"),
        non_negative("size"),
        Index("ix_exports_team_created", "team_id", "created_at"),
        Index("ix_exports_expires", "expires_at"),
    )

    team_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    requested_by_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL")
    )
    job_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    resource: Mapped[str] = mapped_column(String(30))
    format: Mapped[str] = mapped_column(String(10))
    filters: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")
    # Set only once the whole file is stored: a half-written export is never offered.
    storage_key: Mapped[str | None] = mapped_column(String(512), unique=True)
    row_count: Mapped[int | None] = mapped_column(BigInteger)
    size: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))
    finished_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]
