"""In-app notifications and per-user delivery preferences."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, Timestamps, UUIDPrimaryKey, one_of

CHANNELS = ("in_app", "email")


class Notification(UUIDPrimaryKey, Timestamps, Base):
    __tablename__ = "notifications"
    __table_args__ = (
        # Fan-out is idempotent per (event, recipient): a rerun inserts nothing new.
        UniqueConstraint("user_id", "event_key"),
        Index("ix_notifications_user_created", "user_id", "created_at"),
        Index(
            "ix_notifications_user_unread",
            "user_id",
            postgresql_where=text("read_at IS NULL"),
        ),
        # The daily digest's scan: only rows still waiting to be summarised.
        Index(
            "ix_notifications_digest_pending",
            "user_id",
            postgresql_where=text("digest_pending"),
        ),
    )

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    team_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    category: Mapped[str] = mapped_column(String(50))
    event_key: Mapped[str] = mapped_column(String(200))
    title: Mapped[str] = mapped_column(String(300))
    body: Mapped[str | None] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")
    read_at: Mapped[datetime | None]
    # Email delivery: when it was mailed on its own, or that it waits for the daily digest.
    emailed_at: Mapped[datetime | None]
    digest_pending: Mapped[bool] = mapped_column(default=False, server_default="false")


class NotificationPreference(UUIDPrimaryKey, Timestamps, Base):
    __tablename__ = "notification_preferences"
    __table_args__ = (
        UniqueConstraint("user_id", "category", "channel"),
        one_of("channel", CHANNELS),
    )

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    category: Mapped[str] = mapped_column(String(50))
    channel: Mapped[str] = mapped_column(String(20))
    enabled: Mapped[bool] = mapped_column(default=True, server_default="true")
    digest: Mapped[bool] = mapped_column(default=False, server_default="false")
