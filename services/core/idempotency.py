"""Idempotency-Key bookkeeping (API.md): reserve a key, store the first response, replay it.

Each step is its own short transaction, separate from the service's: the reservation
must be visible to a concurrent duplicate (409) before the work starts. One step is not:
the commit of the work itself also marks the key `completed` (`hold_key`), so a request
whose answer could not be stored afterwards (the process died, the database restarted)
is never carried out a second time when its client retries: the retry hears that it was
carried out (409) instead of the reservation expiring and the work running again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import current_app, g, has_request_context
from sqlalchemy import delete, event, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from extensions import db
from models import IdempotencyKey
from services.core.errors import Conflict, ValidationFailed


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
    if record.state == "completed" and record.response_status is None:
        raise Conflict(
            "The request with this Idempotency-Key was carried out, but its answer was lost; "
            "look the result up instead of sending it again."
        )
    if record.state == "in_progress" or record.response_status is None:
        raise Conflict(
            "A request with this Idempotency-Key is still in progress.",
            headers={"Retry-After": "1"},
        )
    return StoredResponse(
        record.response_status, record.response_body or "", dict(record.response_headers or {})
    )


_HELD = "idempotency_held"  # flask.g: (principal, key) reserved by this request


def hold_key(principal: str, key: str) -> None:
    """The next commit of this request's session (the work's) also completes the key."""
    setattr(g, _HELD, (principal, key))


@event.listens_for(Session, "before_commit")
def _complete_with_the_work(session: Session) -> None:
    held = g.pop(_HELD, None) if has_request_context() else None
    if held is not None:
        principal, key = held
        session.execute(
            update(IdempotencyKey)
            .where(IdempotencyKey.principal == principal, IdempotencyKey.key == key)
            .values(state="completed", locked_until=None)
        )


def complete_key(principal: str, key: str, response: StoredResponse) -> None:
    """Store the first response so retries replay it."""
    g.pop(_HELD, None)  # a request that committed nothing: this commit is the record's own
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
    g.pop(_HELD, None)
    db.session.rollback()
    db.session.execute(
        delete(IdempotencyKey).where(
            IdempotencyKey.principal == principal,
            IdempotencyKey.key == key,
            # Not yet answered (a failed request may have committed something first).
            or_(IdempotencyKey.state == "in_progress", IdempotencyKey.response_status.is_(None)),
        )
    )
    db.session.commit()


def delete_expired() -> int:
    """Beat: delete Idempotency-Key records past their replay window; returns how many."""
    result = db.session.execute(
        delete(IdempotencyKey).where(IdempotencyKey.expires_at < datetime.now(UTC))
    )
    db.session.commit()
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
