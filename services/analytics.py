"""Analytics ingestion: validate a batch of events, store it once (client dedup ids).

A batch is all or nothing: every event is checked and every problem reported, keyed by
its position (`events.3.occurred_at`), before anything is stored. Storing is one
multi-row `INSERT ... ON CONFLICT (team_id, dedup_id) DO NOTHING RETURNING id`, so an
event whose dedup id the team already has (or that an earlier event of the same batch
carries) is counted as a duplicate instead of stored twice; events without a dedup id
always insert (NULLs never collide).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from sqlalchemy.dialects.postgresql import insert

from extensions import db
from models import AnalyticsEvent
from services.errors import ValidationFailed
from services.rollups import BUILTIN_PREFIX

MAX_EVENTS: Final = 1_000
MAX_PROPERTIES_BYTES: Final = 8 * 1024
MAX_DEDUP_ID_LENGTH: Final = 100
NAME_PATTERN: Final = r"^[a-z][a-z0-9_.]{0,99}$"
MAX_FUTURE: Final = timedelta(minutes=5)
MAX_AGE: Final = timedelta(days=90)
_NAME = re.compile(NAME_PATTERN)


@dataclass(frozen=True)
class EventInput:
    """One event as a client sent it (already parsed: `occurred_at` is a datetime)."""

    name: str
    occurred_at: datetime
    properties: dict[str, Any] = field(default_factory=dict)
    dedup_id: str | None = None


def name_problem(name: str) -> str | None:
    """Why `name` is not a valid event name, or None."""
    if not _NAME.fullmatch(name):
        return "Use 1-100 characters: a lowercase letter, then a-z, 0-9, '_' or '.'."
    if name.startswith(BUILTIN_PREFIX):
        return f"Names starting with '{BUILTIN_PREFIX}' are reserved for built-in metrics."
    return None


def occurred_at_problem(occurred_at: datetime, now: datetime | None = None) -> str | None:
    """Why `occurred_at` is outside the accepted window (5 minutes ahead, 90 days back)."""
    if occurred_at.tzinfo is None or occurred_at.utcoffset() is None:
        return "Give an ISO-8601 time with a UTC offset."
    now = now or datetime.now(UTC)
    if occurred_at > now + MAX_FUTURE:
        return "Must not be more than 5 minutes in the future."
    if occurred_at < now - MAX_AGE:
        return "Must not be older than 90 days."
    return None


def properties_problem(properties: dict[str, Any]) -> str | None:
    """Why `properties` cannot be stored (too large as JSON, or a NUL character), or None."""
    encoded = json.dumps(properties, separators=(",", ":"), ensure_ascii=False)
    if len(encoded.encode()) > MAX_PROPERTIES_BYTES:
        return f"Must be at most {MAX_PROPERTIES_BYTES} bytes as JSON."
    if "\\u0000" in encoded:  # PostgreSQL's jsonb cannot hold NUL characters
        return "Must not contain NUL characters."
    return None


def dedup_id_problem(dedup_id: str | None) -> str | None:
    """Why `dedup_id` is not usable, or None (absent is fine)."""
    if dedup_id is None:
        return None
    if not 1 <= len(dedup_id) <= MAX_DEDUP_ID_LENGTH:
        return f"Use 1-{MAX_DEDUP_ID_LENGTH} characters."
    if "\x00" in dedup_id:
        return "Must not contain NUL characters."
    return None


def validate_events(events: Sequence[EventInput], now: datetime | None = None) -> None:
    """Raise ValidationFailed listing every problem of the batch, keyed by event index."""
    if not events:
        raise ValidationFailed("Send at least one event.", errors={"events": ["Empty batch."]})
    if len(events) > MAX_EVENTS:
        raise ValidationFailed(
            f"A batch holds at most {MAX_EVENTS} events; split it.",
            errors={"events": [f"At most {MAX_EVENTS} events per request."]},
        )
    now = now or datetime.now(UTC)
    errors: dict[str, list[str]] = {}
    for index, event in enumerate(events):
        checks = {
            "name": name_problem(event.name),
            "occurred_at": occurred_at_problem(event.occurred_at, now),
            "properties": properties_problem(event.properties),
            "dedup_id": dedup_id_problem(event.dedup_id),
        }
        for name, problem in checks.items():
            if problem:
                errors[f"events.{index}.{name}"] = [problem]
    if errors:
        raise ValidationFailed("Some events are invalid; none were stored.", errors=errors)


def ingest_events(team_id: uuid.UUID, events: Sequence[EventInput]) -> tuple[int, int]:
    """Store a validated batch in one transaction; return (accepted, duplicates)."""
    validate_events(events)
    rows = [
        {
            "team_id": team_id,
            "name": event.name,
            "occurred_at": event.occurred_at,
            "properties": event.properties,
            "dedup_id": event.dedup_id,
        }
        for event in events
    ]
    # One statement; a dedup id repeated inside the batch conflicts with its first copy.
    statement = (
        insert(AnalyticsEvent)
        .values(rows)
        .on_conflict_do_nothing(index_elements=["team_id", "dedup_id"])
        .returning(AnalyticsEvent.id)
    )
    accepted = len(db.session.execute(statement).scalars().all())
    db.session.commit()
    return accepted, len(events) - accepted
