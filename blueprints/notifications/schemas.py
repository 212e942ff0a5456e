"""Notification bodies."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from blueprints.common.schemas import ListQuery, Strict
from services.messaging.catalog import CATEGORIES


class NotificationOut(BaseModel):
    id: uuid.UUID
    category: str
    title: str
    body: str | None
    link: str | None
    team_id: uuid.UUID | None
    read: bool
    created_at: datetime


class NotificationPage(BaseModel):
    items: list[NotificationOut]
    next_cursor: str | None


class NotificationEnvelope(BaseModel):
    notification: NotificationOut


class NotificationQuery(ListQuery):
    unread: bool = False


class UnreadCount(BaseModel):
    unread: int


class MarkedRead(BaseModel):
    marked_read: int


class ChannelChoice(Strict):
    in_app: bool | None = None
    email: bool | None = None
    email_digest: bool | None = None


class PreferenceOut(BaseModel):
    in_app: bool
    email: bool
    email_digest: bool
    mandatory: bool = Field(description="Security notices cannot be switched off.")
    description: str


class PreferencesOut(BaseModel):
    preferences: dict[str, PreferenceOut]


class PreferencesIn(Strict):
    preferences: dict[str, ChannelChoice] = Field(
        # At most one entry per category: 50k unknown ones would each get an error line.
        max_length=len(CATEGORIES),
        description="Per category, the channels to change; omitted ones stay as they are.",
    )

    def changes(self) -> dict[str, dict[str, Any]]:
        return {k: v.model_dump(exclude_none=True) for k, v in self.preferences.items()}


class UnsubscribeQuery(BaseModel):
    token: str = Field(min_length=1, max_length=2048)


class Unsubscribed(BaseModel):
    unsubscribed: bool = True
    category: str
