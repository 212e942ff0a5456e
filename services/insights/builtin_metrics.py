"""Built-in metrics (signups, payments, revenue, active users, jobs run and failed): our
own tables' recent windows recomputed into `analytics_rollups`, never folded, since their
rows change state after the fact (a payment succeeds later, a job finishes). The
aggregation runs (services/insights/aggregation.py) call `recompute_builtins` in their
transaction."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Final

from sqlalchemy import text

from extensions import db
from services.insights.rollups import BUILTIN_PREFIX, LIVE_TEAM

# A dead job an operator discarded (services.jobs.dead_letters) still failed for good.
_DISCARDED: Final = "(status = 'cancelled' AND result ->> 'discarded' IS NOT NULL)"
# Each built-in metric as (name expression, value expression, source, time column, filter).
_BUILTINS: Final = (
    ("'builtin.signups'", "count(*)", "team_members", "created_at", "TRUE"),
    ("'builtin.payments.count'", "count(*)", "payments", "succeeded_at", "TRUE"),
    (
        "'builtin.payments.revenue.' || lower(currency)",
        "sum(amount)",
        "payments",
        "succeeded_at",
        "TRUE",
    ),
    (
        "'builtin.active_users'",
        "count(DISTINCT actor_user_id)",
        "audit_logs",
        "created_at",
        "team_id IS NOT NULL AND actor_user_id IS NOT NULL",
    ),
    (
        "'builtin.jobs.run'",
        "count(*)",
        "jobs",
        "finished_at",
        f"team_id IS NOT NULL AND (status IN ('succeeded', 'dead') OR {_DISCARDED})",
    ),
    (
        "'builtin.jobs.failed'",
        "count(*)",
        "jobs",
        "finished_at",
        f"team_id IS NOT NULL AND (status = 'dead' OR {_DISCARDED})",
    ),
)


def recompute_builtins(
    start: datetime, end: datetime, interval: str, team_id: uuid.UUID | None = None
) -> int:
    """Replace the built-in rollups of [start, end) (aligned to `interval`) for every team,
    or one; returns the rows written. Distinct counts are computed per bucket from the
    source, never summed from smaller buckets."""
    if interval not in ("hour", "day"):
        raise ValueError(interval)
    team_filter = "AND team_id = :team" if team_id is not None else ""
    params = {"start": start, "end": end, "interval": interval, "team": team_id}
    db.session.execute(
        text(f"""
            DELETE FROM analytics_rollups
            WHERE "interval" = :interval AND bucket >= :start AND bucket < :end
              AND name LIKE '{BUILTIN_PREFIX}%' {team_filter}
        """),  # noqa: S608 - fixed fragments only
        params,
    )
    selects = [
        f"""SELECT team_id, {name} AS name, date_trunc(:interval, {column}, 'UTC') AS bucket,
                   {value} AS value
            FROM {table}
            WHERE {column} >= :start AND {column} < :end AND {where} {team_filter}
            GROUP BY 1, 2, 3"""  # noqa: S608 - fixed fragments only
        for name, value, table, column, where in _BUILTINS
    ]
    union = " UNION ALL ".join(selects)
    statement = f"""
        INSERT INTO analytics_rollups (team_id, name, "interval", bucket, value)
        SELECT team_id, name, :interval, bucket, value FROM ({union}) AS metrics
        WHERE {LIVE_TEAM}
    """  # noqa: S608 - fixed fragments only
    result = db.session.execute(text(statement), params)
    return int(getattr(result, "rowcount", 0) or 0)
