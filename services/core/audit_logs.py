"""Reading a team's audit trail: filtered pages, newest first, and the chain check."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import select

from models import AuditLog
from services.core.audit_verify import ChainReport, verify_chain
from services.core.pagination import Page, paginate_by_id
from services.core.permissions import Membership


def list_team_audit_logs(
    membership: Membership,
    *,
    action: str | None,
    actor_id: uuid.UUID | None,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    cursor: str | None,
) -> Page[AuditLog]:
    """The team's audit rows, newest first; `since` is inclusive, `until` exclusive."""
    query = select(AuditLog).where(AuditLog.team_id == membership.team_id)
    if action:
        query = query.where(AuditLog.action == action)
    if actor_id:
        query = query.where(AuditLog.actor_user_id == actor_id)
    if since:
        query = query.where(AuditLog.created_at >= _aware(since))
    if until:
        query = query.where(AuditLog.created_at < _aware(until))
    return paginate_by_id(query, AuditLog, limit, cursor)


def verify_team_chain(membership: Membership, cursor: str | None) -> ChainReport:
    """Check the next page of the team's signed chain (AUDIT_VERIFY_MAX_ROWS rows at most)
    and report the first row that does not fit, or the cursor to continue from."""
    return verify_chain(membership.team_id, cursor=cursor)


def _aware(moment: datetime) -> datetime:
    # A timestamp without an offset is read as UTC (API.md: timestamps are UTC).
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
