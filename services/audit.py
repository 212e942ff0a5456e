"""Audit rows, written inside the caller's transaction (never committed here)."""

from __future__ import annotations

import uuid
from typing import Any

from extensions import db
from logs import current_request_id
from models import AuditLog


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
    """Add one audit row to the current session; the calling service commits it."""
    entry = AuditLog(
        action=action,
        actor_user_id=actor_id,
        team_id=team_id,
        subject_type=subject_type,
        subject_id=str(subject_id) if subject_id is not None else None,
        data=data or {},
        ip=ip,
        request_id=current_request_id(),
    )
    db.session.add(entry)
    return entry
