"""Idempotency-Key bookkeeping (API.md): reserve a key, store the first response, replay it.

Each step is its own short transaction, separate from the service's: the reservation
must be visible to a concurrent duplicate (409) before the work starts.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import current_app
from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert

from extensions import db
from models import IdempotencyKey
from services.errors import Conflict, ValidationFailed


@dataclass(frozen=True)
class StoredResponse:
    status: int
    body: str
    headers: dict[str, Any]


def request_fingerprint(method: str, path: str, body: bytes) -> str:
    return hashlib.sha256(method.encode() + b" " + path.encode() + b"\n" + body).hexdigest()


def reserve_key(
    principal: str, key: str, method: str, path: str, fingerprint: str
) -> StoredResponse | None:
    """Claim `key` for this request, or return the stored response to replay.

    Raises 422 if the key was used with another request, 409 if that request is still running.
    """
    settings = current_app.config["SETTINGS"]
    now = datetime.now(UTC)
    session = db.session
    # Forget an expired record, or one whose holder is presumed dead (crashed mid-request).
    session.execute(
        delete(IdempotencyKey).where(
            IdempotencyKey.principal == principal,
            IdempotencyKey.key == key,
            (IdempotencyKey.expires_at < now)
            | ((IdempotencyKey.state == "in_progress") & (IdempotencyKey.locked_until < now)),
        )
    )
    inserted = session.execute(
        insert(IdempotencyKey)
        .values(
            principal=principal,
            key=key,
            method=method,
            path=path,
            request_hash=fingerprint,
            state="in_progress",
            locked_until=now + timedelta(seconds=settings.idempotency_lock_seconds),
            expires_at=now + timedelta(hours=settings.idempotency_ttl_hours),
        )
        .on_conflict_do_nothing(index_elements=["principal", "key"])
        .returning(IdempotencyKey.id)
    ).scalar()
    if inserted is not None:
        session.commit()
        return None
    record = session.scalar(
        select(IdempotencyKey).where(
            IdempotencyKey.principal == principal, IdempotencyKey.key == key
        )
    )
    session.rollback()
    if record is None:  # deleted between our statements: treat as a race, let the client retry
        raise Conflict(
            "A request with this Idempotency-Key is in progress.", headers={"Retry-After": "1"}
        )
    if record.request_hash != fingerprint:
        raise ValidationFailed(
            "This Idempotency-Key was already used with a different request.",
            errors={"Idempotency-Key": ["Reused with a different method, path or body."]},
        )
    if record.state == "in_progress" or record.response_status is None:
        raise Conflict(
            "A request with this Idempotency-Key is still in progress.",
            headers={"Retry-After": "1"},
        )
    return StoredResponse(
        record.response_status, record.response_body or "", dict(record.response_headers or {})
    )


def complete_key(principal: str, key: str, response: StoredResponse) -> None:
    """Store the first response so retries replay it."""
    record = db.session.scalar(
        select(IdempotencyKey).where(
            IdempotencyKey.principal == principal, IdempotencyKey.key == key
        )
    )
    if record is not None:
        record.state = "completed"
        record.response_status = response.status
        record.response_body = response.body
        record.response_headers = response.headers
        record.locked_until = None
    db.session.commit()


def release_key(principal: str, key: str) -> None:
    """Forget a reservation whose request failed, so the client may try again."""
    db.session.rollback()
    db.session.execute(
        delete(IdempotencyKey).where(
            IdempotencyKey.principal == principal,
            IdempotencyKey.key == key,
            IdempotencyKey.state == "in_progress",
        )
    )
    db.session.commit()
