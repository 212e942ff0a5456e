"""The team dashboard: a cached team-wide summary plus the caller's own unread count.

Caching. The team-wide part (members, money, low stock, recent jobs) is computed from
PostgreSQL and kept in Redis as JSON under a key that contains the team's generation
(`dashboard:gen:{team_id}`). Every committed change of the data behind it bumps that
generation (INCR after the commit), so the next reader misses and recomputes. A reader
reads the generation BEFORE it queries the database: if a writer commits while it
computes, the possibly stale result is stored under the old generation, which nobody
reads any more. `DASHBOARD_CACHE_SECONDS` only bounds a bump that got lost (Redis down
just after a commit). Job progress reports (a Core UPDATE per step) deliberately bump
nothing, or a long export would defeat the cache: progress may lag by up to the TTL.

What bumps it: `_invalidate_flushed` (an `after_flush` listener) sees inserts, deletes and
relevant updates of the watched models through the ORM, and code that changes those
tables with Core statements calls `invalidate(team_id)`. Either way one INCR per team
runs after the commit. The listener is registered when this module is imported, which
every process does through services.inventory.items (and the dashboard blueprint).

With a read replica (DATABASE_REPLICA_URL) the team-wide part is read there: it may lag
the primary by the replica's lag, and a summary computed inside that window after a bump
is cached under the new generation until the next change or DASHBOARD_CACHE_SECONDS.

Money (revenue, transactions, subscription) is cached with the rest and removed on the
way out for roles without `payments.read` / `subscription.read`. The unread count is the
caller's own, computed live (one count on a partial index) and never cached. If Redis is
unavailable the summary is computed uncached: the dashboard still answers.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from functools import partial
from typing import Any, Final, Literal, TypedDict, cast

from flask import current_app
from redis.exceptions import RedisError
from sqlalchemy import event, func, inspect, select
from sqlalchemy.orm import Session, UOWTransaction

from extensions import db, redis
from logs import get_logger
from models import InventoryItem, Job, Payment, Refund, Subscription, TeamMember, User
from services.core import permissions, plans, redis_batch
from services.core.commit_hooks import after_commit
from services.core.permissions import Membership
from services.messaging import notifications

log = get_logger(__name__)

SHOWN = 5  # low-stock items and recent jobs listed
HITS_KEY: Final = "dashboard:cache:hits"
MISSES_KEY: Final = "dashboard:cache:misses"
# A generation key lives far longer than any summary stored under it (reads and writes
# refresh it), so it can only expire, and restart from 1, once those summaries are gone.
GENERATION_TTL_SECONDS: Final = 7 * 86_400

# Models shown on the dashboard -> the columns whose UPDATE changes what it shows (None:
# any column). Inserts and deletes always count.
_WATCHED: Final[dict[type, frozenset[str] | None]] = {
    Payment: frozenset({"status", "amount", "currency", "succeeded_at"}),
    Refund: frozenset({"status"}),
    Subscription: None,
    TeamMember: None,
    InventoryItem: None,
    Job: frozenset({"status", "progress"}),
}

CacheResult = Literal["hit", "miss"]


class Money(TypedDict):
    currency: str
    amount: int  # gross, minor units
    count: int


class Summary(TypedDict):
    """The team-wide part, JSON-ready (ids and times as strings): what the cache holds."""

    generated_at: str
    members: int
    revenue: dict[str, list[Money]] | None  # {"today": [...], "month": [...]}
    transactions_today: int | None
    subscription: dict[str, Any] | None
    low_stock: dict[str, Any]  # {"count": n, "items": [...]}
    recent_jobs: list[dict[str, Any]]


@dataclass(frozen=True)
class Dashboard:
    summary: Summary  # money parts None where the caller's role may not see them
    unread_notifications: int
    cache: CacheResult


def get_dashboard(user: User, membership: Membership) -> Dashboard:
    """The dashboard of `membership`'s team as its role may see it, with `user`'s unread
    notification count. Read-only; the team-wide part comes from the cache when current."""
    summary, cache = _team_summary(membership.team_id)
    if not permissions.allows(membership.role, "payments.read"):
        summary["revenue"] = summary["transactions_today"] = None
    if not permissions.allows(membership.role, "subscription.read"):
        summary["subscription"] = None
    return Dashboard(summary, notifications.unread_count(user), cache)


def invalidate(team_id: uuid.UUID, session: Session | None = None) -> None:
    """Make the team's cached dashboard stale once the current transaction commits (for
    changes made with Core statements, which the flush listener cannot see)."""
    after_commit(partial(_bump, team_id), key=("dashboard", team_id), session=session)


def on_job_row_changed(job: Job) -> None:
    """Receiver of the kernel's `row_changed` signal: a team's dashboard lists its jobs,
    and the flush listener cannot see a job changed by an UPDATE statement."""
    if job.team_id is not None:
        invalidate(job.team_id)


# --- cache -------------------------------------------------------------------------------


def _team_summary(team_id: uuid.UUID) -> tuple[Summary, CacheResult]:
    now = datetime.now(UTC)
    # The generation is read before the queries below. Under READ COMMITTED (PostgreSQL's
    # default, used here) each of them sees every commit made before it started, even
    # though the request's transaction began earlier (the membership check).
    try:
        generation, cached = _read_cached(team_id, now.date())
    except RedisError as exc:
        log.warning("dashboard_cache_unavailable", team_id=str(team_id), error=type(exc).__name__)
        return compute_summary(team_id, now), "miss"
    if cached is not None:
        summary: Summary = json.loads(cached)
        return summary, "hit"
    summary = compute_summary(team_id, now)
    _store(team_id, generation, now.date(), summary)
    return summary, "miss"


# The team's generation (its TTL refreshed), the summary stored under it for the day, and
# the hit counted if there was one: one round trip for what took three. The summary's key
# depends on the generation, so the script builds it (`_summary_key`'s format).
_READ_CACHED = """
local generation = redis.call("getex", KEYS[1], "EX", ARGV[1]) or "0"
local cached = redis.call("get", ARGV[2] .. generation .. ":" .. ARGV[3])
if cached then
    redis.call("incr", KEYS[2])
end
return {generation, cached}
"""


def _read_cached(team_id: uuid.UUID, day: date) -> tuple[int, bytes | None]:
    script = redis.client.register_script(_READ_CACHED)
    generation, cached = cast(
        list[Any],
        script(keys=[_generation_key(team_id), HITS_KEY],
               args=[_generation_ttl(), f"dashboard:summary:{team_id}:", day.isoformat()]),
    )  # fmt: skip
    return int(generation), cached


def _generation_key(team_id: uuid.UUID) -> str:
    return f"dashboard:gen:{team_id}"


def _summary_key(team_id: uuid.UUID, generation: int, day: date) -> str:
    # The UTC day is part of the key: "today" never outlives midnight, whatever the TTL.
    return f"dashboard:summary:{team_id}:{generation}:{day.isoformat()}"


def _generation_ttl() -> int:
    cache_seconds: int = current_app.config["SETTINGS"].dashboard_cache_seconds
    return max(GENERATION_TTL_SECONDS, 2 * cache_seconds)


def _store(team_id: uuid.UUID, generation: int, day: date, summary: Summary) -> None:
    ttl = current_app.config["SETTINGS"].dashboard_cache_seconds
    try:
        pipe = redis.client.pipeline(transaction=False)
        pipe.set(_summary_key(team_id, generation, day), json.dumps(summary), ex=ttl)
        pipe.incr(MISSES_KEY)
        pipe.execute()
    except RedisError as exc:
        log.warning("dashboard_cache_unavailable", team_id=str(team_id), error=type(exc).__name__)


def _bump(team_id: uuid.UUID) -> None:
    """After the commit: on the caller's Redis batch if there is one (a job's settle sends
    this with its other Redis writes), else at once. A failure is logged: the commit
    stands, and the TTL bounds the stale window."""
    key = _generation_key(team_id)
    with redis_batch.writes("dashboard_invalidation_failed", team_id=str(team_id)) as pipe:
        pipe.incr(key)
        pipe.expire(key, _generation_ttl())


@event.listens_for(Session, "after_flush")
def _invalidate_flushed(session: Session, _flush_context: UOWTransaction) -> None:
    """Bump, after the commit, the dashboard of every team whose shown data was flushed."""
    teams = {_team_of(obj) for obj in session.new if type(obj) in _WATCHED}
    teams.update(_team_of(obj) for obj in session.deleted if type(obj) in _WATCHED)
    teams.update(
        _team_of(obj)
        for obj in session.dirty
        if type(obj) in _WATCHED and _shown_columns_changed(session, obj)
    )
    for team_id in teams:
        if team_id is not None:
            invalidate(team_id, session)


def _team_of(obj: object) -> uuid.UUID | None:
    # The flushed value, never a lazy load in the middle of a flush.
    team_id = inspect(obj).dict.get("team_id")
    return team_id if isinstance(team_id, uuid.UUID) else None


def _shown_columns_changed(session: Session, obj: object) -> bool:
    columns = _WATCHED[type(obj)]
    if columns is None:
        return session.is_modified(obj, include_collections=False)
    attrs = inspect(obj).attrs
    return any(attrs[column].history.has_changes() for column in columns)


# --- the summary -------------------------------------------------------------------------


def compute_summary(team_id: uuid.UUID, now: datetime) -> Summary:
    """The team-wide figures as of `now` (UTC days and months), straight from PostgreSQL
    (the read replica when there is one)."""
    today = datetime.combine(now.date(), time.min, UTC)
    with db.replica_reads():
        revenue = _revenue(team_id, since_day=today, since_month=today.replace(day=1))
        return {
            "generated_at": now.isoformat(),
            "members": plans.member_count(team_id),
            "revenue": revenue,
            "transactions_today": sum(money["count"] for money in revenue["today"]),
            "subscription": _subscription(team_id),
            "low_stock": _low_stock(team_id),
            "recent_jobs": _recent_jobs(team_id),
        }


def _revenue(
    team_id: uuid.UUID, *, since_day: datetime, since_month: datetime
) -> dict[str, list[Money]]:
    """Gross captured amounts per currency (refunds later do not undo a capture)."""
    in_day = Payment.succeeded_at >= since_day
    rows = db.session.execute(
        select(
            Payment.currency,
            func.sum(Payment.amount).label("month_amount"),
            func.count().label("month_count"),
            func.coalesce(func.sum(Payment.amount).filter(in_day), 0).label("day_amount"),
            func.count().filter(in_day).label("day_count"),
        )
        .where(Payment.team_id == team_id, Payment.succeeded_at >= since_month)
        .group_by(Payment.currency)
        .order_by(Payment.currency)
    ).all()
    return {
        "today": [
            Money(currency=r.currency, amount=int(r.day_amount), count=int(r.day_count))
            for r in rows
            if r.day_count
        ],
        "month": [
            Money(currency=r.currency, amount=int(r.month_amount), count=int(r.month_count))
            for r in rows
        ],
    }


def _subscription(team_id: uuid.UUID) -> dict[str, Any]:
    live = plans.live_subscription(team_id)
    if live is None:
        return {"plan": plans.FREE, "status": None, "cancel_at_period_end": False,
                "current_period_end": None}  # fmt: skip
    period_end = live.current_period_end.isoformat() if live.current_period_end else None
    return {"plan": live.plan, "status": live.status,
            "cancel_at_period_end": live.cancel_at_period_end,
            "current_period_end": period_end}  # fmt: skip


def _low_stock(team_id: uuid.UUID) -> dict[str, Any]:
    """Active items at or below their threshold (as services.inventory.items alerts), emptiest
    first; the count covers all of them, the list the first few."""
    rows = db.session.execute(
        select(
            InventoryItem.id, InventoryItem.sku, InventoryItem.name, InventoryItem.quantity,
            InventoryItem.low_stock_threshold, func.count().over().label("total"),
        )
        .where(
            InventoryItem.team_id == team_id,
            InventoryItem.archived.is_(False),
            InventoryItem.quantity <= InventoryItem.low_stock_threshold,
        )
        .order_by(InventoryItem.quantity, InventoryItem.sku)
        .limit(SHOWN)
    ).all()  # fmt: skip
    items = [
        {"id": str(r.id), "sku": r.sku, "name": r.name, "quantity": int(r.quantity),
         "low_stock_threshold": int(r.low_stock_threshold)}
        for r in rows
    ]  # fmt: skip
    return {"count": int(rows[0].total) if rows else 0, "items": items}


def _recent_jobs(team_id: uuid.UUID) -> list[dict[str, Any]]:
    rows = db.session.execute(
        select(Job.id, Job.type, Job.status, Job.progress, Job.created_at)
        .where(Job.team_id == team_id)
        .order_by(Job.created_at.desc(), Job.id.desc())
        .limit(SHOWN)
    ).all()
    return [
        {"id": str(r.id), "type": r.type, "status": r.status, "progress": int(r.progress),
         "created_at": r.created_at.isoformat()}
        for r in rows
    ]  # fmt: skip
