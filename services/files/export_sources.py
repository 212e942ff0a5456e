"""What an export holds: each resource's team-scoped, ordered query (payments, inventory,
audit logs, analytics events, members) with its header, and the planner's row estimate
that the progress bar uses. The SQL lives here; export_formats.py turns rows into bytes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Select, select

from extensions import db
from models import AnalyticsEvent, AuditLog, Export, InventoryItem, Payment, TeamMember, User


def export_query(export: Export) -> tuple[list[str], Sequence[Any], Any]:
    """The header, the columns and the (team-scoped, ordered) query of an export."""
    team_id, filters = export.team_id, export.filters or {}
    start, end = (datetime.fromisoformat(filters[k]) if filters.get(k) else None
                  for k in ("from", "to"))  # fmt: skip
    columns: Sequence[Any]
    if export.resource == "payments":
        columns = (Payment.id, Payment.created_at, Payment.amount, Payment.amount_refunded,
                   Payment.currency, Payment.status, Payment.description,
                   Payment.failure_reason, Payment.succeeded_at)  # fmt: skip
        query: Any = select(*columns).where(Payment.team_id == team_id)
        if filters.get("status"):
            query = query.where(Payment.status == filters["status"])
        stamp: Any = Payment.created_at
        # The same order as GET .../payments, so the file reads like the API's list.
        order: tuple[Any, ...] = (Payment.created_at.desc(), Payment.id.desc())
    elif export.resource == "inventory":
        columns = (
            InventoryItem.id, InventoryItem.sku, InventoryItem.name, InventoryItem.description,
            InventoryItem.quantity, InventoryItem.unit_price, InventoryItem.currency,
            InventoryItem.low_stock_threshold, InventoryItem.archived, InventoryItem.created_at,
            InventoryItem.updated_at,
        )  # fmt: skip
        query = select(*columns).where(InventoryItem.team_id == team_id)
        stamp, order = InventoryItem.created_at, (InventoryItem.sku,)
    elif export.resource == "audit_logs":
        columns = (AuditLog.id, AuditLog.created_at, AuditLog.action, AuditLog.actor_user_id,
                   AuditLog.subject_type, AuditLog.subject_id, AuditLog.data, AuditLog.ip,
                   AuditLog.request_id, AuditLog.hash)  # fmt: skip
        query = select(*columns).where(AuditLog.team_id == team_id)
        stamp, order = AuditLog.created_at, (AuditLog.id,)
    elif export.resource == "analytics":
        columns = (AnalyticsEvent.id, AnalyticsEvent.name, AnalyticsEvent.occurred_at,
                   AnalyticsEvent.properties, AnalyticsEvent.dedup_id)  # fmt: skip
        query = select(*columns).where(AnalyticsEvent.team_id == team_id)
        stamp, order = AnalyticsEvent.occurred_at, (AnalyticsEvent.id,)
    else:  # members
        columns = (TeamMember.user_id, User.email, User.name, TeamMember.role,
                   TeamMember.created_at)  # fmt: skip
        query = (select(*columns).join(User, User.id == TeamMember.user_id)
                 .where(TeamMember.team_id == team_id))  # fmt: skip
        stamp, order = TeamMember.created_at, (TeamMember.created_at, TeamMember.user_id)
    if start is not None:
        query = query.where(stamp >= start)
    if end is not None:
        query = query.where(stamp < end)
    header = ["joined_at" if c is TeamMember.created_at else c.key for c in columns]
    return header, columns, query.order_by(*order)


def on_driver(query: Select[Any]) -> tuple[Any, str, dict[str, Any]]:
    """(psycopg connection of the session's transaction, SQL, parameters) of `query`,
    for statements that wrap it (EXPLAIN, COPY) and so must go to the driver itself."""
    connection = db.session.connection()
    compiled = query.compile(dialect=connection.dialect)
    driver = connection.connection.driver_connection
    assert driver is not None
    return driver, str(compiled), dict(compiled.params)


def estimated_rows(query: Select[Any]) -> int:
    """The planner's row estimate for `query` (EXPLAIN, nothing is read)."""
    driver, sql, params = on_driver(query)
    with driver.cursor() as cursor:
        cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
        row = cursor.fetchone()
    plan = row[0] if row else None
    if isinstance(plan, str):
        plan = json.loads(plan)
    try:
        return max(0, int(plan[0]["Plan"]["Plan Rows"]))  # type: ignore[index]
    except (TypeError, LookupError, ValueError):
        return 0
