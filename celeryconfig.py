"""Every Celery setting in one place: broker, queues, routes, reliability and the beat schedule.

The queues and the route of each task name belong to the job kernel
(services/jobs/queues.py, beside the names); this module turns them into Celery settings.

`build(settings)` returns the dict that `create_app` applies to `extensions.celery_app`.
"""

from __future__ import annotations

from typing import Any

from celery.schedules import crontab
from kombu.entity import Exchange, Queue

from config import Settings
from integrations.broker_state import DEAD_LETTER_EXCHANGE
from redis_urls import is_sentinel_url
from services.jobs import names
from services.jobs.queues import (
    DEFAULT,
    EXPORTS,
    NOTIFICATIONS,
    QUEUES,
    queue_for,
    route_task,
)

# The queues, re-exported: operators' and tests' one place for "every Celery setting".
__all__ = ["DEFAULT", "EXPORTS", "NOTIFICATIONS", "QUEUES", "build", "queue_for", "route_task"]


def build(settings: Settings) -> dict[str, Any]:
    """The Celery configuration for these settings."""
    transport_options: dict[str, Any] = {
        # kombu's Redis socket timeout defaults to None: with the broker down, publishing
        # would hang the web request (celery#4296). Fail fast; the job row is the outbox.
        "socket_timeout": 3,
        "socket_connect_timeout": 2,
        "socket_keepalive": True,
        "retry_on_timeout": True,
        # Longer than any task may run, so a running acks_late task is never redelivered
        # while it is still working (celery#5935). The reaper handles dead workers faster.
        "visibility_timeout": settings.broker_visibility_timeout,
        "health_check_interval": 10,
    }
    if is_sentinel_url(settings.broker_url):
        # kombu's Sentinel transport asks the sentinels for this master (README "Redis
        # Sentinel"); config.py refuses a sentinel URL without the name.
        transport_options["master_name"] = settings.redis_sentinel_master
    return {
        "broker_url": settings.broker_url,
        "broker_transport_options": (
            rabbitmq_transport_options() if settings.broker_is_rabbitmq else transport_options
        ),
        "broker_connection_timeout": 2,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,  # workers keep trying; the web never waits
        "broker_heartbeat": 10,
        # Job state lives in PostgreSQL; results would only grow Redis (celery#7801).
        "result_backend": None,
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "timezone": "UTC",
        "enable_utc": True,
        # Reliability: ack after the work, redeliver if the pool process dies mid-task.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        "worker_eta_task_limit": 100,
        "task_time_limit": settings.task_time_limit,
        "task_soft_time_limit": max(settings.task_time_limit - 30, 1),
        # Short, bounded publish retries; after that the relay takes over.
        "task_publish_retry": True,
        "task_publish_retry_policy": {
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        "task_queues": task_queues(settings),
        "task_default_queue": DEFAULT,
        "task_default_exchange": DEFAULT,
        "task_default_routing_key": DEFAULT,
        "task_routes": (route_task,),
        "task_create_missing_queues": False,
        # Flower needs the workers' events (received, started, succeeded...); they are cheap
        # with ignore_result and paid by workers, not requests.
        "worker_send_task_events": True,
        # No "task-sent" event per publish by default: it is a second broker message in
        # every request that enqueues, only so Flower lists a task before a worker takes
        # it (Flower shows it from `task-received` on). CELERY_TASK_SENT_EVENTS turns it on.
        "task_send_sent_event": settings.celery_task_sent_events,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        # Deploys: SIGTERM is Celery's warm shutdown, bounded by WORKER_SHUTDOWN_GRACE_SECONDS
        # (tasks/runtime/worker_drain.py turns it into a cold shutdown then). No soft shutdown: it
        # would sleep its whole timeout on every shutdown with a task running.
        "worker_soft_shutdown_timeout": 0.0,
        # Each worker also consumes its own queue (`<node>.dq2`), where it sends itself
        # liveness heartbeats (tasks/runtime/worker_health.py, scripts/worker_check.py).
        "worker_direct": True,
        "worker_hijack_root_logger": False,
        "beat_schedule": beat_schedule(settings),
        # One schedule for every beat, in PostgreSQL: each period of a job entry is claimed
        # once and its job written with the claim, so a beat that takes over never sends it
        # again. One sending beat at a time (a Redis lease; a second beat stands by), and a
        # `beat:last_tick` heartbeat for the "beat silent" alert (tasks/runtime/beat_scheduler.py).
        "beat_scheduler": "tasks.runtime.beat_scheduler:LeaderScheduler",
        "beat_max_loop_interval": 10,
    }


def rabbitmq_transport_options() -> dict[str, Any]:
    """RabbitMQ: publisher confirms, so a publish returns only once the broker has the
    message (on a quorum queue: a majority of its replicas); a publish the broker refused
    or never confirmed raises, and the job stays in the outbox for the relay."""
    return {"confirm_publish": True}


def task_queues(settings: Settings) -> list[Queue]:
    """Our queues, each on an exchange of its own name.

    On RabbitMQ (with BROKER_QUORUM_QUEUES, the default) they are quorum queues: replicated
    and durable; a message redelivered BROKER_DELIVERY_LIMIT times (its worker killed or
    cut off each time) is dead-lettered (at least once) to DEAD_LETTER_EXCHANGE, whose
    queue the reaper drains into our dead letters (services/jobs/reaper.py). Their
    exchanges are topic exchanges, which Celery's native delayed delivery needs: a retry's
    countdown waits in RabbitMQ's delay queues, not in a worker's memory (quorum queues
    have no global QoS to hold ETA messages with). Celery detects the quorum queues itself
    (`worker_detect_quorum_queues`) and uses per-consumer prefetch. Redis keeps plain queues.
    """
    if not settings.broker_is_rabbitmq:
        return [Queue(q, Exchange(q), routing_key=q) for q in QUEUES]  # type: ignore[no-untyped-call]
    arguments: dict[str, Any] = {}
    if settings.broker_quorum_queues:
        arguments = {
            "x-queue-type": "quorum",
            "x-delivery-limit": settings.broker_delivery_limit,
            "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
            # At least once: a dead letter stays in its queue until the dead-letter queue
            # has it (this strategy needs the reject-publish overflow).
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }
    return [
        Queue(q, Exchange(q, type="topic"), routing_key=q, queue_arguments=arguments)  # type: ignore[no-untyped-call]
        for q in QUEUES
    ]


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """Periodic jobs. Each entry: what it does, how often, and why.

    An entry whose task is a job (`job_task`) is on beat's shared schedule: each period
    (a crontab match, or a multiple of an interval since the epoch, in UTC) is sent once by
    whichever beat leads, as a job, and `expires` (seconds) drops a run no worker took in
    time. The housekeeping every few seconds (`periodic_task`) is sent by the leader alone,
    unrecorded: a duplicate is harmless and the next tick comes seconds later.
    """
    return {
        # Every few seconds: publish jobs whose message never reached the broker (it was
        # down at commit time) or whose retry backoff has elapsed. Bounds the delay of
        # recovered work to this interval.
        "jobs-relay": {
            "task": names.JOBS_RELAY,
            "schedule": settings.relay_interval_seconds,
            "options": {"expires": settings.relay_interval_seconds * 2},
        },
        # Every few seconds: link the audit rows requests wrote since into their team's
        # chain and seal its head (services/core/audit_chain.py).
        "audit-seal": {
            "task": names.AUDIT_SEAL,
            "schedule": settings.audit_seal_interval_seconds,
            "options": {"expires": settings.audit_seal_interval_seconds * 2},
        },
        # Every 10 s: re-enqueue jobs whose worker died (stale heartbeat), so recovery
        # never waits on the broker's visibility timeout and nothing stays `running`.
        "jobs-reap": {
            "task": names.JOBS_REAP,
            "schedule": 10.0,
            "options": {"expires": 20},
        },
        # Hourly at :02 (the closed hour's last batches have committed): queue an
        # `analytics.aggregate` run folding new events into rollups and recomputing the
        # last hours of built-in metrics. A run already waiting makes the tick a no-op, and
        # the expiry drops ticks a stopped worker missed (the next run catches up anyway).
        "analytics-aggregate": {
            "task": names.ANALYTICS_START_AGGREGATE,
            "schedule": crontab(minute=2),
            "options": {"expires": 1800},
        },
        # Hourly (at :00 UTC): delete Idempotency-Key records past their 24 h replay window.
        "idempotency-cleanup": {
            "task": names.MAINTENANCE_CLEANUP_IDEMPOTENCY_KEYS,
            "schedule": 3600.0,
            "options": {"expires": 1800},
        },
        # Hourly (at :00 UTC): uploads whose browser never called `complete` within
        # PENDING_UPLOAD_HOURS are deleted with their objects, so abandoned bytes do not
        # accumulate in storage.
        "uploads-cleanup-pending": {
            "task": names.UPLOADS_CLEANUP_PENDING,
            "schedule": 3600.0,
            "options": {"expires": 1800},
        },
        # Daily at 03:15 UTC (a quiet hour): queue the `subscriptions.reconcile` job, which
        # re-reads every live subscription from the gateway (catching webhooks that were
        # lost or rejected) and sends past-due teams their daily dunning email.
        "subscriptions-reconcile": {
            "task": names.SUBSCRIPTIONS_START_RECONCILE,
            "schedule": crontab(hour=3, minute=15),
            "options": {"expires": 3600},
        },
        # Daily at 03:45 UTC, after the subscriptions have converged: queue the
        # `payments.reconcile` job comparing the last day's payments with the gateway's
        # and reporting mismatches to operators. Money discrepancies must surface within
        # a day, not at the month-end close.
        "payments-reconcile": {
            "task": names.PAYMENTS_START_RECONCILE,
            "schedule": crontab(hour=3, minute=45),
            "options": {"expires": 3600},
        },
        # Daily at 04:30 UTC: delete the objects of exports past EXPORT_RETENTION_DAYS and
        # mark their rows expired (downloads already answer 410 after `expires_at`; this
        # frees the storage). The rows stay as history.
        "exports-cleanup": {
            "task": names.EXPORTS_CLEANUP,
            "schedule": crontab(hour=4, minute=30),
            "options": {"expires": 3600},
        },
        # Daily at 06:00 UTC, when aggregation has long folded in yesterday's late events
        # and built-ins: create yesterday's report of every team with an opted-in owner or
        # admin and queue its `reports.send` job. Once per team and day (a unique row per
        # period), so even a backfill or an admin's re-run sends nothing twice. Expires after
        # 6 h: a backlog (workers down all day) drops stale ticks instead of running one
        # after midnight, which would report the day just ended before it settled.
        "reports-daily": {
            "task": names.REPORTS_START_DAILY,
            "schedule": crontab(hour=6, minute=0),
            "options": {"expires": 6 * 3600},
        },
        # Mondays at 06:30 UTC, after the daily one: last week's (Monday to Monday) usage
        # summary, once per team and week like the daily report; expires the same way.
        "reports-weekly": {
            "task": names.REPORTS_START_WEEKLY,
            "schedule": crontab(hour=6, minute=30, day_of_week="mon"),
            "options": {"expires": 6 * 3600},
        },
        # Daily at 07:00 UTC: one email summarising the day's notifications for users who
        # chose a digest over immediate email (guarded by a per-day Redis key: two beats
        # still send one digest).
        "notification-digests": {
            "task": names.NOTIFICATIONS_START_DIGESTS,
            "schedule": crontab(hour=7, minute=0),
            "options": {"expires": 3600},
        },
    }
