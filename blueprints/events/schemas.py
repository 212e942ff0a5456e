"""Representations for the realtime area (API.md "Async work: jobs", Realtime)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class StreamTokenOut(BaseModel):
    """A short-lived `?token=` for `GET /api/v1/events/stream` (EventSource sends no headers)."""

    token: str
    expires_in: int = Field(description="Seconds until the token can no longer open a stream.")


class StreamQuery(BaseModel):
    """Query parameters of the stream. Headers win over these when both are sent."""

    token: str | None = Field(
        None, max_length=1024, description="A stream token, for clients that cannot send headers."
    )
    last_event_id: str | None = Field(
        None,
        max_length=64,
        description="Resume after this event id (what a new EventSource cannot send as the "
        "Last-Event-ID header).",
    )
