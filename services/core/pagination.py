"""Keyset pagination over (created_at, id), newest first, with opaque cursors."""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, and_, or_

from extensions import db
from services.core.errors import ValidationFailed

T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None


def encode_cursor(created_at: datetime, row_id: uuid.UUID) -> str:
    raw = json.dumps([created_at.isoformat(), str(row_id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created_at, row_id = json.loads(base64.urlsafe_b64decode(padded))
        return datetime.fromisoformat(created_at), uuid.UUID(row_id)
    except (ValueError, TypeError) as exc:
        raise ValidationFailed(
            "The cursor is not valid.", errors={"cursor": ["Use a next_cursor from a response."]}
        ) from exc


def paginate(query: Select[T], model: Any, limit: int, cursor: str | None) -> Page[T]:
    """One page of `query` (newest first) after `cursor`."""
    if cursor:
        created_at, row_id = decode_cursor(cursor)
        query = query.where(
            or_(
                model.created_at < created_at,
                and_(model.created_at == created_at, model.id < row_id),
            )
        )
    rows = list(
        db.session.scalars(
            query.order_by(model.created_at.desc(), model.id.desc()).limit(limit + 1)
        )
    )
    more = len(rows) > limit
    rows = rows[:limit]
    last: Any = rows[-1] if rows and more else None  # a model row with created_at and id
    return Page(rows, encode_cursor(last.created_at, last.id) if last is not None else None)


def encode_id_cursor(row_id: int) -> str:
    return base64.urlsafe_b64encode(json.dumps(["id", row_id]).encode()).decode().rstrip("=")


def decode_id_cursor(cursor: str) -> int:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        kind, row_id = json.loads(base64.urlsafe_b64decode(padded))
        if kind != "id" or not isinstance(row_id, int) or isinstance(row_id, bool):
            raise ValueError(cursor)
        return row_id
    except (ValueError, TypeError) as exc:
        raise ValidationFailed(
            "The cursor is not valid.", errors={"cursor": ["Use a next_cursor from a response."]}
        ) from exc


def paginate_by_id(query: Select[T], model: Any, limit: int, cursor: str | None) -> Page[T]:
    """One page of `query` by descending integer `id` (newest first for sequence ids).

    For append-only tables keyed by a sequence (audit rows): the id alone orders them,
    so the cursor is just the last id seen.
    """
    if cursor:
        query = query.where(model.id < decode_id_cursor(cursor))
    rows = list(db.session.scalars(query.order_by(model.id.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    last: Any = rows[-1] if rows and more else None
    return Page(rows, encode_id_cursor(last.id) if last is not None else None)
