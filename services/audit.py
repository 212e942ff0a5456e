"""The audit trail: append-only rows, hash-chained per team so tampering is detectable.

Rows are written inside the caller's transaction (never committed here). Appends to one
team's chain are serialised by a transaction-scoped advisory lock, so two concurrent
writers can never fork the chain; other teams are not blocked.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flask import has_request_context, request
from sqlalchemy import select, text

from extensions import db
from logs import current_request_id
from models import AuditLog

GLOBAL_CHAIN = "global"  # rows without a team (sign-ins, operator actions)


def record_audit(
    action: str,
    *,
    actor_id: uuid.UUID | None = None,
    team_id: uuid.UUID | None = None,
    subject_type: str | None = None,
    subject_id: object = None,
    data: dict[str, Any] | None = None,
    ip: str | None = None,
) -> AuditLog:
    """Append one audit row to its team's chain in the current transaction."""
    session = db.session
    chain = str(team_id) if team_id else GLOBAL_CHAIN
    session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:chain))"), {"chain": chain})
    prev_hash = session.scalar(
        select(AuditLog.hash)
        .where(AuditLog.team_id == team_id if team_id else AuditLog.team_id.is_(None))
        .order_by(AuditLog.id.desc())
        .limit(1)
    )
    in_request = has_request_context()
    entry = AuditLog(
        action=action,
        actor_user_id=actor_id,
        team_id=team_id,
        subject_type=subject_type,
        subject_id=str(subject_id) if subject_id is not None else None,
        data=data or {},
        ip=ip or (request.remote_addr if in_request else None),
        user_agent=(request.headers.get("User-Agent", "")[:500] or None) if in_request else None,
        request_id=current_request_id(),
        created_at=datetime.now(UTC),
        prev_hash=prev_hash,
    )
    entry.hash = row_hash(entry)
    session.add(entry)
    session.flush()  # the next row in this transaction chains onto this one
    return entry


def row_hash(entry: AuditLog) -> str:
    """SHA-256 over the row's content and its predecessor's hash."""
    content = {
        "team_id": str(entry.team_id) if entry.team_id else None,
        "actor_user_id": str(entry.actor_user_id) if entry.actor_user_id else None,
        "action": entry.action,
        "subject_type": entry.subject_type,
        "subject_id": entry.subject_id,
        "data": entry.data,
        "ip": str(entry.ip) if entry.ip else None,
        "user_agent": entry.user_agent,
        "request_id": entry.request_id,
        "created_at": entry.created_at.astimezone(UTC).isoformat(),
        "prev_hash": entry.prev_hash,
    }
    encoded = json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(encoded.encode()).hexdigest()


@dataclass(frozen=True)
class ChainReport:
    intact: bool
    rows_checked: int
    first_bad_id: int | None = None
    reason: str | None = None


def verify_chain(team_id: uuid.UUID | None, batch_size: int = 1000) -> ChainReport:
    """Recompute the team's chain from the start; report the first row that does not fit."""
    condition = AuditLog.team_id == team_id if team_id else AuditLog.team_id.is_(None)
    prev_hash: str | None = None
    checked, last_id = 0, 0
    while True:
        rows = db.session.scalars(
            select(AuditLog).where(condition, AuditLog.id > last_id).order_by(AuditLog.id)
            .limit(batch_size).execution_options(populate_existing=True)
        ).all()  # fmt: skip
        if not rows:
            return ChainReport(True, checked)
        for row in rows:
            if row.prev_hash != prev_hash:
                return ChainReport(False, checked, row.id, "the link to the previous row is broken")
            if row.hash != row_hash(row):
                return ChainReport(False, checked, row.id, "the row's content was changed")
            prev_hash, last_id = row.hash, row.id
            checked += 1
