"""Stored first responses for `Idempotency-Key` replays (API.md "Idempotency")."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import SmallInteger, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, Timestamps, UUIDPrimaryKey, one_of


class IdempotencyKey(UUIDPrimaryKey, Timestamps, Base):
    __tablename__ = "idempotency_keys"
    __table_args__ = (
        # Keys are scoped per authenticated principal.
        UniqueConstraint("principal", "key"),
        one_of("state", ("in_progress", "completed")),
    )

    principal: Mapped[str] = mapped_column(String(100))
    key: Mapped[str] = mapped_column(String(255))
    method: Mapped[str] = mapped_column(String(10))
    path: Mapped[str] = mapped_column(Text)
    request_hash: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(20), default="in_progress")
    response_status: Mapped[int | None] = mapped_column(SmallInteger)
    response_body: Mapped[str | None] = mapped_column(Text)
    response_headers: Mapped[dict[str, Any] | None]
    # While in progress: after this the holder is presumed dead and the key can be taken.
    locked_until: Mapped[datetime | None]
    expires_at: Mapped[datetime] = mapped_column(index=True)
