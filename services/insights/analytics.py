"""Analytics ingestion: validate a batch of events, store it once (client dedup ids).

A batch is all or nothing: every event is checked and every problem reported, keyed by
its position (`events.3.occurred_at`), before anything is stored. Storing is one
`INSERT ... SELECT ... ON CONFLICT (team_id, dedup_id) DO NOTHING` of the whole batch, so
an event whose dedup id the team already has (or that an earlier event of the same batch
carries) is counted as a duplicate instead of stored twice; events without a dedup id
always insert (NULLs never collide).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from pydantic import TypeAdapter
from sqlalchemy import text

from extensions import db
from services.core.errors import ValidationFailed
from services.insights.rollups import BUILTIN_PREFIX

MAX_EVENTS: Final = 1_000
MAX_PROPERTIES_BYTES: Final = 8 * 1024
MAX_DEDUP_ID_LENGTH: Final = 100
NAME_PATTERN: Final = r"^[a-z][a-z0-9_.]{0,99}$"
MAX_FUTURE: Final = timedelta(minutes=5)
MAX_AGE: Final = timedelta(days=90)
_NAME = re.compile(NAME_PATTERN)
_MAX_FUTURE_SECONDS: Final = MAX_FUTURE.total_seconds()
_MAX_AGE_SECONDS: Final = MAX_AGE.total_seconds()
# One encoder for every size check (json.dumps with options builds a new one per call).
_COMPACT_JSON: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


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
    # POSIX seconds: comparing aware datetimes of two tzinfo types costs 4 utcoffset calls.
    moment, current = occurred_at.timestamp(), now.timestamp() if now else time.time()
    if moment > current + _MAX_FUTURE_SECONDS:
        return "Must not be more than 5 minutes in the future."
    if moment < current - _MAX_AGE_SECONDS:
        return "Must not be older than 90 days."
    return None


def properties_problem(properties: dict[str, Any]) -> str | None:
    """Why `properties` cannot be stored (too large as JSON, or a NUL character), or None."""
    encoded = _COMPACT_JSON.encode(properties)
    size = len(encoded) if encoded.isascii() else len(encoded.encode())
    if size > MAX_PROPERTIES_BYTES:
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


# The batch as one JSON array (pydantic-core encodes it: ~3x faster than json.dumps).
_BATCH_JSON: Final = TypeAdapter(list[EventInput])
# One statement for the whole batch, whatever its size: the events travel as ONE jsonb
# parameter and PostgreSQL unpacks them (jsonb_to_recordset), instead of a VALUES list
# of 5 parameters per event that SQLAlchemy and psycopg would build, compile and parse
# on every request. Rows are inserted in the batch's order (ORDER BY the ordinality), so
# a dedup id repeated inside the batch conflicts with its first copy.
_INSERT_BATCH: Final = text("""
    WITH stored AS (
        INSERT INTO analytics_events (team_id, name, occurred_at, properties, dedup_id)
        SELECT :team_id, e.name, e.occurred_at, e.properties, e.dedup_id
        FROM ROWS FROM (
                 jsonb_to_recordset(CAST(:events AS jsonb))
                 AS (name text, occurred_at timestamptz, properties jsonb, dedup_id text)
             ) WITH ORDINALITY AS e(name, occurred_at, properties, dedup_id, n)
        ORDER BY e.n
        ON CONFLICT (team_id, dedup_id) DO NOTHING
        RETURNING 1
    )
    SELECT count(*) FROM stored
""")


def ingest_events(
    team_id: uuid.UUID, events: Sequence[EventInput], *, checked: bool = False
) -> tuple[int, int]:
    """Store a batch in one transaction; return (accepted, duplicates). The batch is
    validated first unless `checked` says its caller already ran these same rules on it
    (the HTTP schema does, event by event)."""
    if not checked:
        validate_events(events)
    batch = _BATCH_JSON.dump_json(list(events)).decode()
    accepted = int(
        db.session.execute(_INSERT_BATCH, {"team_id": team_id, "events": batch}).scalar_one()
    )
    db.session.commit()
    return accepted, len(events) - accepted
