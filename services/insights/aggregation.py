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
incremental path and the two never double count.

Two kinds of run (aggregation_runs.py queues them). The hourly `run` folds every team and
moves the global watermark. An admin's on-demand `run_team` folds only their team's new
transactions and records how far in the team's own watermark
(`analytics_team_watermarks`), never the global one: other teams' unread events stay
below the global watermark for the next hourly run, which in turn skips the events team
runs already folded and drops the team rows it overtook. For any team, "folded" is
therefore every transaction below the larger of the two marks. Locks: the hourly run
takes a transaction-scoped advisory lock exclusively; team runs take it shared (teams
proceed side by side) plus a lock of their team, so two beats queue up behind each other
and behind running team runs, never race them.

Deleted teams: `forget_team` (called in the deletion's transaction) deletes a team's
rollups, and every run skips teams marked deleted, so none come back. Rollups have no
foreign key to teams (derived data, written hundreds of thousands at a time).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from sqlalchemy import text

from extensions import db
from services.insights.builtin_metrics import recompute_builtins
from services.insights.rollups import BUILTIN_PREFIX, LIVE_TEAM, floor

EVENTS: Final = "events"  # the watermark's source name
BUILTIN_LOOKBACK: Final = timedelta(hours=3)  # late-finishing jobs, slow webhooks
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


def run(now: datetime | None = None) -> Summary:
    """The hourly pass over every team, in the caller's transaction: new events and the
    recent built-in windows."""
    _lock()
    events, watermark = _fold_new_events()
    now = now or datetime.now(UTC)
    builtin_rows = recompute_builtins(floor(now - BUILTIN_LOOKBACK, "hour"), now, "hour")
    builtin_rows += recompute_builtins(floor(now - timedelta(days=1), "day"), now, "day")
    return Summary(events, watermark, builtin_rows)


def run_team(
    team_id: uuid.UUID,
    start: datetime | None = None,
    end: datetime | None = None,
    now: datetime | None = None,
) -> Summary:
    """An on-demand pass over one team, in the caller's transaction: its new events, its
    recent built-in windows and, given a window, a full recompute of that window. No other
    team's rollups or watermark are touched."""
    _lock_team(team_id)
    events, watermark = _fold_team_events(team_id)
    now = now or datetime.now(UTC)
    rows = recompute_builtins(floor(now - BUILTIN_LOOKBACK, "hour"), now, "hour", team_id)
    rows += recompute_builtins(floor(now - timedelta(days=1), "day"), now, "day", team_id)
    recomputed = 0
    if start is not None and end is not None:
        recomputed = recompute(team_id, start, end, locked=True)
    return Summary(events, watermark, rows, recomputed)


def recompute(team_id: uuid.UUID, start: datetime, end: datetime, *, locked: bool = False) -> int:
    """Rebuild the team's rollups for the whole UTC days covering [start, end); returns
    the number of rollup rows written."""
    if not locked:
        _lock_team(team_id)
    first, last = day_window(start, end)
    watermark = _team_watermark(team_id)
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
        written += recompute_builtins(first, last, interval, team_id=team_id)
    return written


def day_window(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    """[start, end) widened to whole UTC days (day rollups are only ever whole)."""
    first = floor(start, "day")
    last = floor(end, "day")
    if last < end:
        last += timedelta(days=1)
    return first, last


def _lock() -> None:
    """The all-teams run: alone (waits for team runs, and they for it)."""
    db.session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": _LOCK_KEY})


def _lock_team(team_id: uuid.UUID) -> None:
    """A team run: beside other teams' runs, alone in its team, never beside the all-teams
    run (which must not move the global watermark under it)."""
    db.session.execute(
        text("SELECT pg_advisory_xact_lock_shared(hashtext(:key))"), {"key": _LOCK_KEY}
    )
    db.session.execute(
        text("SELECT pg_advisory_xact_lock(hashtext(:key), hashtext(:team))"),
        {"key": _LOCK_KEY, "team": str(team_id)},
    )


def _watermark() -> int:
    value = db.session.execute(
        text("SELECT xid FROM analytics_watermarks WHERE source = :source"), {"source": EVENTS}
    ).scalar()
    return int(value or 0)


def _team_watermark(team_id: uuid.UUID) -> int:
    """Every transaction of the team below this is folded in (global or team mark)."""
    value = db.session.execute(
        text("SELECT xid FROM analytics_team_watermarks WHERE team_id = :team"), {"team": team_id}
    ).scalar()
    return max(_watermark(), int(value or 0))


def _horizon() -> int:
    """The oldest transaction still running: everything below it has committed or never
    will. Read before this transaction writes, so our own id cannot hold it back."""
    return int(
        db.session.execute(
            text("SELECT CAST(CAST(pg_snapshot_xmin(pg_current_snapshot()) AS text) AS bigint)")
        ).scalar_one()
    )


# Events a team run has already folded (below its team's watermark) are not the hourly
# run's to add again.
_NOT_FOLDED_BY_TEAM_RUN: Final = """
    NOT EXISTS (
        SELECT 1 FROM analytics_team_watermarks tw
        WHERE tw.team_id = analytics_events.team_id
          AND analytics_events.ingest_xid < CAST(CAST(tw.xid AS text) AS xid8)
    )"""


def _fold_new_events() -> tuple[int, int]:
    """Add the events of every finished transaction since the watermark (but those team
    runs folded); return (events read, new watermark). Must run under the lock and before
    this transaction writes."""
    horizon = _horizon()
    lower = _watermark()
    if horizon <= lower:
        return 0, lower
    params = {"lower": str(lower), "upper": str(horizon)}
    where = (
        "ingest_xid >= CAST(CAST(:lower AS text) AS xid8)"
        " AND ingest_xid < CAST(CAST(:upper AS text) AS xid8)"
    )
    # Both checks below hold for the rest of this transaction: team watermarks and event
    # rollups are written only by aggregation runs, and we hold the aggregation lock
    # exclusively (`_lock`), so no team run is writing now; the ones that committed
    # before we got the lock are visible to these statements (each takes a new snapshot
    # under READ COMMITTED). Rollups deleted meanwhile (`forget_team`) cannot collide.
    if _team_watermarks_exist():
        where += f" AND {_NOT_FOLDED_BY_TEAM_RUN}"  # a 5M-row anti-join otherwise
    events = _insert_event_rollups(
        where,
        params,
        additive=True,
        # The first hourly run (no global watermark yet) into a table without event
        # rollups (team runs may have written some before it) cannot collide: plain
        # INSERTs, no speculative insertion. Every later run adds with ON CONFLICT.
        empty=lower == 0 and not _event_rollups_exist(),
    )
    db.session.execute(
        text("""
            INSERT INTO analytics_watermarks (source, xid) VALUES (:source, :xid)
            ON CONFLICT (source) DO UPDATE SET xid = excluded.xid, updated_at = now()
        """),
        {"source": EVENTS, "xid": horizon},
    )
    # Team marks at or below the global one say nothing more.
    db.session.execute(
        text("DELETE FROM analytics_team_watermarks WHERE xid <= :xid"), {"xid": horizon}
    )
    return events, horizon


def _fold_team_events(team_id: uuid.UUID) -> tuple[int, int]:
    """Add the team's events of every finished transaction since its watermark; return
    (events read, the team's new watermark). Under the team's lock, before any write."""
    horizon = _horizon()
    lower = _team_watermark(team_id)
    if horizon <= lower:
        return 0, lower
    params = {"team": team_id, "lower": str(lower), "upper": str(horizon)}
    events = _insert_event_rollups(
        "team_id = :team AND ingest_xid >= CAST(CAST(:lower AS text) AS xid8)"
        " AND ingest_xid < CAST(CAST(:upper AS text) AS xid8)",
        params,
        additive=True,
        # The team's first fold: its event rollups are written only by runs holding its
        # team lock (ours) or the exclusive lock (excluded by our shared one), so if none
        # exist now, none appear before we commit.
        empty=not _event_rollups_exist(team_id),
    )
    db.session.execute(
        text("""
            INSERT INTO analytics_team_watermarks (team_id, xid) VALUES (:team, :xid)
            ON CONFLICT (team_id) DO UPDATE SET xid = excluded.xid, updated_at = now()
        """),
        {"team": team_id, "xid": horizon},
    )
    return events, horizon


def _team_watermarks_exist() -> bool:
    return bool(
        db.session.execute(text("SELECT EXISTS (SELECT FROM analytics_team_watermarks)")).scalar()
    )


def _event_rollups_exist(team_id: uuid.UUID | None = None) -> bool:
    """Whether any client-event rollup is stored (of the team, or of any team)."""
    team_filter = "team_id = :team AND" if team_id is not None else ""
    return bool(
        db.session.execute(
            text(f"""
                SELECT EXISTS (
                    SELECT FROM analytics_rollups
                    WHERE {team_filter} name NOT LIKE '{BUILTIN_PREFIX}%'
                )
            """),  # noqa: S608 - fixed fragments only
            {"team": team_id},
        ).scalar()
    )


# Runs write nothing for a deleted team (`forget_team` removed what it had).


def forget_team(team_id: uuid.UUID) -> int:
    """Delete a deleted team's rollups, in the caller's transaction (the one marking it
    deleted); returns the rows deleted. Takes the team's aggregation lock, so a run that
    started before the deletion (and does not skip the team) finishes first; runs after
    it see the team deleted and write nothing for it."""
    _lock_team(team_id)
    result = db.session.execute(
        text("DELETE FROM analytics_rollups WHERE team_id = :team"), {"team": team_id}
    )
    return int(getattr(result, "rowcount", 0) or 0)


def _insert_event_rollups(
    where: str, params: dict[str, Any], *, additive: bool = False, empty: bool = False
) -> int:
    """Group the matching events by team, name and hour in one scan and write the hour and
    day rows; `additive` adds to what is stored (incremental) and returns the number of
    events read, else inserts fresh rows into a window the caller emptied and returns the
    number of rollup rows written. `empty`: the caller guarantees that no rollup these
    rows could collide with exists, so an additive run inserts without ON CONFLICT."""
    on_conflict = (
        'ON CONFLICT (team_id, name, "interval", bucket) DO UPDATE'
        " SET value = analytics_rollups.value + excluded.value, updated_at = now()"
        if additive and not empty
        else ""
    )
    returning = "" if additive else "RETURNING 1"
    result = (
        "SELECT coalesce(sum(n), 0) FROM fresh"
        if additive
        else "SELECT (SELECT count(*) FROM hours) + (SELECT count(*) FROM days)"
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
            SELECT team_id, name, 'hour', hour, n FROM fresh WHERE {LIVE_TEAM}
            ORDER BY 1, 2, 4  -- the key's order: on a first run every insert appends
            {on_conflict}
            {returning}
        ),
        days AS (
            INSERT INTO analytics_rollups (team_id, name, "interval", bucket, value)
            SELECT team_id, name, 'day', date_trunc('day', hour, 'UTC'), sum(n) FROM fresh
            WHERE {LIVE_TEAM}
            GROUP BY 1, 2, 4
            {on_conflict}
            {returning}
        )
        {result}
    """  # noqa: S608 - `where` and the other fragments are fixed ones from this module
    # A batch statement over up to millions of rows: JIT compiling it cost more than it
    # saved (bench B8). Local to this transaction (the job's), like the rest of the run.
    db.session.execute(text("SET LOCAL jit = off"))
    # Hash the day groups (a few thousand) instead of sorting every hour group: the
    # planner cannot see how few there are behind the CTE. For this statement only.
    sort = db.session.execute(text("SELECT current_setting('enable_sort')")).scalar()
    db.session.execute(text("SET LOCAL enable_sort = off"))
    value = db.session.execute(text(statement), params).scalar_one()
    db.session.execute(text("SELECT set_config('enable_sort', :was, true)"), {"was": sort})
    return int(value)
