"""Aggregation: fold analytics events and our own tables into `analytics_rollups`.

Two kinds of metric, two strategies:

* **Client events** are append-only and can be huge, so they are folded in
  *incrementally*: each run reads only the transactions between the watermark and the
  oldest transaction still running (see `models.analytics`), adds their counts to the hour
  and day rows in ONE statement, and moves the watermark in the same transaction. A run
  that crashes moved nothing; a run that committed never rereads. A late event (one that
  occurred hours or days ago) is simply in a new transaction, so its old window is
  corrected by the next run.
* **Built-in metrics** (signups, payments, revenue, active users, jobs) come from rows
  that change state (a payment succeeds later, a job finishes), so their recent windows
  are *recomputed*: delete and re-insert the last few hours and the last two days.

`recompute` rebuilds any whole-day window of one team from the raw events: it counts only
what the watermark has already folded in, so rerunning it gives the same numbers as the
incremental path and the two never double count. Every entry point takes one
transaction-scoped advisory lock, so two beats or an admin's on-demand run queue up
instead of racing.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from sqlalchemy import select, text

from extensions import db
from models import Job, TeamMember, User
from services.audit import record_audit
from services.errors import ValidationFailed
from services.rollups import BUILTIN_PREFIX, floor
from tasks.dispatch import enqueue

AGGREGATE_TASK: Final = "analytics.aggregate"
EVENTS: Final = "events"  # the watermark's source name
BUILTIN_LOOKBACK: Final = timedelta(hours=3)  # late-finishing jobs, slow webhooks
MAX_RECOMPUTE: Final = timedelta(days=92)  # events older than 90 days are refused anyway
_LOCK_KEY: Final = "analytics.aggregate"


@dataclass(frozen=True)
class Summary:
    """What one run did (the job's result)."""

    events: int
    watermark: int
    builtin_rows: int
    recomputed_rows: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "watermark": self.watermark,
            "builtin_rows": self.builtin_rows,
            "recomputed_rows": self.recomputed_rows,
        }


def request_run(
    user: User, membership: TeamMember, start: datetime | None, end: datetime | None
) -> Job:
    """An admin's on-demand run: fold new events now and, given a window, rebuild the
    team's rollups over it (whole UTC days). One transaction: the job and its audit row."""
    args: dict[str, Any] = {"team_id": str(membership.team_id)}
    if (start is None) != (end is None):
        raise ValidationFailed(
            "Give both `from` and `to`, or neither.",
            errors={"from" if start is None else "to": ["Required with the other bound."]},
        )
    if start is not None and end is not None:
        if end <= start:
            raise ValidationFailed("`to` must be after `from`.", errors={"to": ["Too early."]})
        if end - start > MAX_RECOMPUTE:
            raise ValidationFailed(
                "Rebuild at most 92 days at a time.", errors={"to": ["Window too long."]}
            )
        args |= {"from": start.isoformat(), "to": end.isoformat()}
    job = enqueue(AGGREGATE_TASK, args=args, user_id=user.id, team_id=membership.team_id)
    record_audit("analytics.aggregate_requested", actor_id=user.id, team_id=membership.team_id,
                 subject_type="job", subject_id=job.id, data=args)  # fmt: skip
    db.session.commit()
    return job


def start_scheduled_run() -> Job | None:
    """Beat's hourly trigger: one queued run at a time (a backlog of ticks adds nothing)."""
    waiting = db.session.scalar(
        select(Job.id)
        .where(Job.type == AGGREGATE_TASK, Job.status.in_(("queued", "retrying", "running")))
        .limit(1)
    )
    if waiting is not None:
        return None
    job = enqueue(AGGREGATE_TASK, args={})
    db.session.commit()
    return job


def run(
    team_id: uuid.UUID | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    now: datetime | None = None,
) -> Summary:
    """The hourly (or on-demand) pass in the caller's transaction: new events, the recent
    built-in windows, and, with a team and a window, a full recompute of that window."""
    _lock()
    events, watermark = _fold_new_events()
    now = now or datetime.now(UTC)
    builtin_rows = _recompute_builtins(floor(now - BUILTIN_LOOKBACK, "hour"), now, "hour")
    builtin_rows += _recompute_builtins(floor(now - timedelta(days=1), "day"), now, "day")
    recomputed = 0
    if team_id is not None and start is not None and end is not None:
        recomputed = recompute(team_id, start, end, locked=True)
    return Summary(events, watermark, builtin_rows, recomputed)


def recompute(team_id: uuid.UUID, start: datetime, end: datetime, *, locked: bool = False) -> int:
    """Rebuild the team's rollups for the whole UTC days covering [start, end); returns
    the number of rollup rows written."""
    if not locked:
        _lock()
    first, last = day_window(start, end)
    watermark = _watermark()
    params = {"team": team_id, "start": first, "end": last, "watermark": str(watermark)}
    db.session.execute(
        text("""
            DELETE FROM analytics_rollups
            WHERE team_id = :team AND bucket >= :start AND bucket < :end
              AND name NOT LIKE 'builtin.%'
        """),
        params,
    )
    written = _insert_event_rollups(
        "team_id = :team AND occurred_at >= :start AND occurred_at < :end"
        " AND ingest_xid < CAST(CAST(:watermark AS text) AS xid8)",
        params,
    )
    for interval in ("hour", "day"):
        written += _recompute_builtins(first, last, interval, team_id=team_id)
    return written


def day_window(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    """[start, end) widened to whole UTC days (day rollups are only ever whole)."""
    first = floor(start, "day")
    last = floor(end, "day")
    if last < end:
        last += timedelta(days=1)
    return first, last


def _lock() -> None:
    db.session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": _LOCK_KEY})


def _watermark() -> int:
    value = db.session.execute(
        text("SELECT xid FROM analytics_watermarks WHERE source = :source"), {"source": EVENTS}
    ).scalar()
    return int(value or 0)


def _fold_new_events() -> tuple[int, int]:
    """Add the events of every finished transaction since the watermark; return (events
    read, new watermark). Must run under the lock and before this transaction writes:
    the horizon is read first, so our own transaction id cannot hold it back."""
    horizon = int(
        db.session.execute(
            text("SELECT CAST(CAST(pg_snapshot_xmin(pg_current_snapshot()) AS text) AS bigint)")
        ).scalar_one()
    )
    lower = _watermark()
    if horizon <= lower:
        return 0, lower
    params = {"lower": str(lower), "upper": str(horizon)}
    events = _insert_event_rollups(
        "ingest_xid >= CAST(CAST(:lower AS text) AS xid8)"
        " AND ingest_xid < CAST(CAST(:upper AS text) AS xid8)",
        params,
        additive=True,
    )
    db.session.execute(
        text("""
            INSERT INTO analytics_watermarks (source, xid) VALUES (:source, :xid)
            ON CONFLICT (source) DO UPDATE SET xid = excluded.xid, updated_at = now()
        """),
        {"source": EVENTS, "xid": horizon},
    )
    return events, horizon


def _insert_event_rollups(where: str, params: dict[str, Any], *, additive: bool = False) -> int:
    """Group the matching events by team, name and hour in one scan and write the hour and
    day rows; `additive` adds to what is stored (incremental), else inserts fresh rows
    into a window the caller emptied. Returns the number of events read (additive) or of
    rollup rows written."""
    on_conflict = (
        'ON CONFLICT (team_id, name, "interval", bucket) DO UPDATE'
        " SET value = analytics_rollups.value + excluded.value, updated_at = now()"
        if additive
        else ""
    )
    statement = f"""
        WITH fresh AS MATERIALIZED (
            SELECT team_id, name, date_trunc('hour', occurred_at, 'UTC') AS hour,
                   count(*) AS n
            FROM analytics_events WHERE {where}
            GROUP BY 1, 2, 3
        ),
        hours AS (
            INSERT INTO analytics_rollups (team_id, name, "interval", bucket, value)
            SELECT team_id, name, 'hour', hour, n FROM fresh
            {on_conflict}
            RETURNING 1
        ),
        days AS (
            INSERT INTO analytics_rollups (team_id, name, "interval", bucket, value)
            SELECT team_id, name, 'day', date_trunc('day', hour, 'UTC'), sum(n) FROM fresh
            GROUP BY 1, 2, 4
            {on_conflict}
            RETURNING 1
        )
        SELECT (SELECT coalesce(sum(n), 0) FROM fresh),
               (SELECT count(*) FROM hours) + (SELECT count(*) FROM days)
    """  # noqa: S608 - `where` and `on_conflict` are fixed fragments from this module
    read, written = db.session.execute(text(statement), params).one()
    return int(read) if additive else int(written)


# A dead job an operator discarded (services.dead_letters) still failed for good.
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


def _recompute_builtins(
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
    """  # noqa: S608 - fixed fragments only
    result = db.session.execute(text(statement), params)
    return int(getattr(result, "rowcount", 0) or 0)
