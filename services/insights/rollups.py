"""Reading metrics: time series from `analytics_rollups` only (never the raw events).

Buckets are UTC hours or UTC days, `start` inclusive and `end` exclusive, both rounded
down to the interval. Series are zero-filled so a chart needs no gap handling: a bucket
with no rollup row had no events. Rollups move once per aggregation run, so they are read
from the read replica when there is one (DATABASE_REPLICA_URL).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from sqlalchemy import select

from extensions import db
from models import AnalyticsRollup
from services.core.errors import ValidationFailed

STEP: Final = {"hour": timedelta(hours=1), "day": timedelta(days=1)}
# Rows of teams marked deleted are never written (a deleted team keeps no rollups).
LIVE_TEAM: Final = "team_id NOT IN (SELECT id FROM teams WHERE deleted_at IS NOT NULL)"
MAX_POINTS: Final = 1_000

# Metrics computed from our own tables (`services.insights.aggregation`). Clients cannot send
# events under this prefix (ingestion refuses it), so a name means one thing.
BUILTIN_PREFIX: Final = "builtin."
SIGNUPS: Final = "builtin.signups"  # members who joined the team
ACTIVE_USERS: Final = "builtin.active_users"  # distinct members who did something
PAYMENTS_COUNT: Final = "builtin.payments.count"  # payments that succeeded
REVENUE_PREFIX: Final = "builtin.payments.revenue."  # + currency: minor units captured
JOBS_RUN: Final = "builtin.jobs.run"  # jobs that finished (succeeded or failed for good)
JOBS_FAILED: Final = "builtin.jobs.failed"  # jobs that failed for good


def revenue_metric(currency: str) -> str:
    """The revenue metric of one currency (`builtin.payments.revenue.eur`)."""
    return REVENUE_PREFIX + currency.lower()


@dataclass(frozen=True)
class Point:
    bucket: datetime
    value: int


def floor(moment: datetime, interval: str) -> datetime:
    """The start of the UTC hour or day holding `moment`."""
    moment = moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return moment.replace(hour=0) if interval == "day" else moment


def buckets(start: datetime, end: datetime, interval: str) -> list[datetime]:
    """Every bucket start in [floor(start), end), refusing more than MAX_POINTS."""
    first, step = floor(start, interval), STEP[interval]
    if end <= first:
        raise ValidationFailed("`to` must be after `from`.", errors={"to": ["Must be after from."]})
    count = -(-(end - first) // step)  # ceiling division of timedeltas
    if count > MAX_POINTS:
        raise ValidationFailed(
            f"At most {MAX_POINTS} points per request; shorten the range or use interval=day.",
            errors={"to": [f"The range holds {count} {interval}s."]},
        )
    return [first + i * step for i in range(count)]


def series(
    team_id: uuid.UUID, name: str, start: datetime, end: datetime, interval: str
) -> list[Point]:
    """The metric's zero-filled series for the team over [start, end)."""
    wanted = buckets(start, end, interval)
    with db.replica_reads():
        rows = db.session.execute(
            select(AnalyticsRollup.bucket, AnalyticsRollup.value).where(
                AnalyticsRollup.team_id == team_id,
                AnalyticsRollup.name == name,
                AnalyticsRollup.interval == interval,
                AnalyticsRollup.bucket >= wanted[0],
                AnalyticsRollup.bucket < end,
            )
        ).all()
    stored = {bucket: value for bucket, value in rows}
    return [Point(bucket, stored.get(bucket, 0)) for bucket in wanted]


def totals(team_id: uuid.UUID, start: datetime, end: datetime) -> dict[str, int]:
    """Every metric's total over the whole UTC days in [start, end), by name (reports)."""
    with db.replica_reads():
        rows = db.session.execute(
            select(AnalyticsRollup.name, AnalyticsRollup.value).where(
                AnalyticsRollup.team_id == team_id,
                AnalyticsRollup.interval == "day",
                AnalyticsRollup.bucket >= floor(start, "day"),
                AnalyticsRollup.bucket < end,
            )
        ).all()
    result: dict[str, int] = {}
    for name, value in rows:
        # Distinct counts do not add up across days; a report shows their daily peak.
        if name == ACTIVE_USERS:
            result[name] = max(result.get(name, 0), value)
        else:
            result[name] = result.get(name, 0) + value
    return result
