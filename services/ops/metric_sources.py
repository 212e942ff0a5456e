"""The operational metric families, each read from shared state when Prometheus scrapes.

Queues, jobs, the outbox, breakers, beat and business gauges are facts about the whole
system, read from PostgreSQL and Redis (cheap, indexed queries); per-task counters are
totals the workers keep in Redis (`services.jobs.metrics`). `services.ops.metrics` runs these.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Final, cast

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from sqlalchemy import text

from extensions import db, redis
from integrations.broker_state import broker_state
from services.jobs import metrics as task_metrics
from services.jobs.metrics import BEAT_LAST_TICK_KEY
from services.jobs.queues import QUEUES

BREAKERS: Final = ("smtp", "stripe", "s3")
BREAKER_STATES: Final = {"closed": 0, "half-open": 1, "open": 2}
# Jobs by status: the states that stay small (finished ones are counted by the task
# counters instead, so a scrape never counts a huge history).
LIVE_STATUSES: Final = ("queued", "running", "retrying", "failed", "dead")


def tasks() -> Iterator[Metric]:
    """Per task: runs started/succeeded/failed/retried/dead, and a runtime histogram."""
    counts = cast(dict[bytes, bytes], redis.client.hgetall(task_metrics.COUNTS_KEY))
    runs = CounterMetricFamily(
        "maycole_task_runs",
        "Job runs by task and outcome (all workers).",
        labels=["task", "outcome"],
    )
    for field, value in sorted(counts.items()):
        outcome, _, task = _text(field).partition("|")
        runs.add_metric([task, outcome], int(value))
    yield runs
    runtimes = cast(dict[bytes, bytes], redis.client.hgetall(task_metrics.RUNTIME_KEY))
    per_task: dict[str, dict[str, float]] = {}
    for field, value in runtimes.items():
        task, _, key = _text(field).rpartition("|")
        per_task.setdefault(task, {})[key] = float(value)
    histogram = HistogramMetricFamily(
        "maycole_task_runtime_seconds", "How long job runs took, by task.", labels=["task"]
    )
    for task, values in sorted(per_task.items()):
        cumulative, buckets = 0.0, []
        for le in [*(str(b) for b in task_metrics.BUCKETS), "+Inf"]:
            cumulative += values.get(le, 0.0)
            buckets.append((le, cumulative))
        histogram.add_metric([task], buckets, sum_value=values.get("sum", 0.0))
    yield histogram


def queues() -> Iterator[Metric]:
    """Messages waiting in each broker queue, and how long the oldest has waited."""
    depth = GaugeMetricFamily(
        "maycole_queue_depth", "Messages waiting in the broker queue.", labels=["queue"]
    )
    # Read from the broker itself (integrations/broker_state.py: LLEN on Redis, a passive
    # declare on RabbitMQ); a broker that cannot be read fails this source's scrape.
    broker = broker_state()
    if broker is not None:
        for queue, length in broker.depths(QUEUES).items():
            depth.add_metric([queue], length)
        yield depth
    # The broker keeps no timestamps; the job ledger does: a published job still queued
    # is a message nobody has taken yet.
    rows = db.session.execute(
        text("""
            SELECT queue, extract(epoch FROM now() - min(published_at))
            FROM jobs WHERE status = 'queued' AND published_at IS NOT NULL GROUP BY queue
        """)
    ).all()
    ages = dict.fromkeys(QUEUES, 0.0) | {queue: float(age) for queue, age in rows}
    oldest = GaugeMetricFamily(
        "maycole_queue_oldest_message_age_seconds",
        "Age of the oldest published job not yet picked up, by queue.",
        labels=["queue"],
    )
    for queue, age in sorted(ages.items()):
        oldest.add_metric([queue], age)
    yield oldest


def jobs() -> Iterator[Metric]:
    """Jobs in each live status, the dead-letter count and the outbox backlog."""
    rows = db.session.execute(
        text("SELECT status, count(*) FROM jobs WHERE status = ANY(:statuses) GROUP BY status"),
        {"statuses": list(LIVE_STATUSES)},
    ).all()
    counts = dict.fromkeys(LIVE_STATUSES, 0) | {status: int(n) for status, n in rows}
    by_status = GaugeMetricFamily("maycole_jobs", "Jobs by (live) status.", labels=["status"])
    for status, count in counts.items():
        by_status.add_metric([status], count)
    yield by_status
    yield GaugeMetricFamily(
        "maycole_dead_letters", "Jobs that failed for good (dead), awaiting an operator.",
        value=counts["dead"],
    )  # fmt: skip
    backlog, oldest = db.session.execute(
        text("""
            SELECT count(*), coalesce(extract(epoch FROM now() - min(run_after)), 0)
            FROM jobs WHERE published_at IS NULL AND status IN ('queued', 'retrying')
              AND run_after <= now()
        """)
    ).one()
    yield GaugeMetricFamily(
        "maycole_outbox_backlog", "Jobs due but not yet published to the broker.", value=backlog
    )
    yield GaugeMetricFamily(
        "maycole_outbox_oldest_seconds", "How long the oldest unpublished due job has waited.",
        value=float(oldest),
    )  # fmt: skip


def breakers() -> Iterator[Metric]:
    """Each circuit breaker's shared state: 0 closed, 1 half-open, 2 open."""
    keys = [f"breaker:{name}:pybreaker:state" for name in BREAKERS]
    states = cast(list[bytes | None], redis.client.mget(keys))
    family = GaugeMetricFamily(
        "maycole_circuit_breaker_state",
        "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
        labels=["breaker"],
    )
    for name, raw in zip(BREAKERS, states, strict=True):
        family.add_metric([name], BREAKER_STATES.get(_text(raw or b"closed"), 0))
    yield family


def beat() -> Iterator[Metric]:
    """When the leading beat last ticked (absent until a beat has run)."""
    raw = cast(bytes | None, redis.client.get(BEAT_LAST_TICK_KEY))
    if raw is not None:
        last = float(_text(raw))
        yield GaugeMetricFamily(
            "maycole_beat_last_tick_timestamp_seconds", "Unix time of beat's last tick.",
            value=last,
        )  # fmt: skip
        yield GaugeMetricFamily(
            "maycole_beat_seconds_since_tick", "Seconds since beat's last tick.",
            value=max(0.0, time.time() - last),
        )  # fmt: skip


def business() -> Iterator[Metric]:
    """Users, and today's (UTC) captured transactions and revenue per currency."""
    users = db.session.execute(text("SELECT count(*) FROM users WHERE deleted_at IS NULL"))
    yield GaugeMetricFamily("maycole_users", "Accounts not deleted.", value=users.scalar_one())
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    rows = db.session.execute(
        text("""
            SELECT currency, count(*), sum(amount) FROM payments
            WHERE succeeded_at >= :midnight GROUP BY currency
        """),
        {"midnight": midnight},
    ).all()
    transactions = GaugeMetricFamily(
        "maycole_transactions_today", "Payments captured today (UTC).", labels=["currency"]
    )
    revenue = GaugeMetricFamily(
        "maycole_revenue_today_minor",
        "Amount captured today (UTC), in minor units.",
        labels=["currency"],
    )
    for currency, count, amount in rows:
        transactions.add_metric([currency], int(count))
        revenue.add_metric([currency], int(amount))
    yield transactions
    yield revenue


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw
