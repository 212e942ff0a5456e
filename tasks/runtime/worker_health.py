"""In the worker's main process: the liveness heartbeat and the broker eviction check.

Heartbeat (services/ops/worker_liveness.py explains the why): a consumer bootstep publishes a
`workers.heartbeat` message to this worker's own queue (`worker_direct`: `<node>.dq2`)
every WORKER_HEARTBEAT_SECONDS. The worker takes it from the broker like any task, on
the same connection, channel and prefetch window as its task queues, so it stops
arriving exactly when the worker stops consuming. It never reaches a pool process: its
strategy (what the main process does with a received message) records the arrival and
acks at once. No job row, no result, no task events: heartbeats are not user work and
never show up in the job ledger or in Flower.

Only one heartbeat is in flight at a time (another is sent only if it seems lost), so a
worker that stops consuming leaves at most a couple of messages in its queue; a worker
shutting down cleanly deletes its queue and its record.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable
from typing import Any, cast

import redis
from celery import Celery, bootsteps
from celery.utils.nodenames import worker_direct
from celery.worker import state as worker_state
from redis.backoff import NoBackoff
from redis.retry import Retry

from config import Settings
from extensions import celery_app
from logs import get_logger
from redis_urls import is_sentinel_url, redis_client
from services.jobs import names
from services.ops.worker_liveness import HeartbeatRecord, health_dir, remove_record, write_record

log = get_logger(__name__)
_celery_log = logging.getLogger(__name__)


class Heartbeats:
    """What the main process knows about its own heartbeats (event-loop thread only)."""

    def __init__(self, node: str, settings: Settings) -> None:
        now = time.time()
        self.directory = health_dir(settings.worker_health_dir)
        self.republish_after = settings.worker_heartbeat_max_age_seconds / 2
        # Tells our heartbeats from leftovers of an earlier process with the same name.
        self.run_id = uuid.uuid4().hex
        self.sent = self.seen = 0
        self.record = HeartbeatRecord(
            node=node, pid=os.getpid(), started_at=now, tick_at=now, healthy_at=now
        )

    def tick(self, publish: Callable[[list[Any]], None], reserved: int, capacity: int) -> None:
        """Note the loop ran; publish a heartbeat unless one is on its way."""
        now = time.time()
        record = self.record
        record.tick_at = now
        # Every prefetch slot taken: no message can arrive now, heartbeats included.
        record.saturated = capacity > 0 and reserved >= capacity
        if record.saturated:
            record.healthy_at = now
        waiting = self.seen < self.sent
        lost = (
            waiting
            and not record.saturated
            and now - (record.published_at or 0) >= self.republish_after
        )
        if not waiting or lost:
            try:
                publish([self.run_id, self.sent + 1])
            except Exception as exc:  # noqa: BLE001 - the probe will tell; the loop must go on
                log.warning("worker_heartbeat_publish_failed", error=f"{type(exc).__name__}: {exc}")
            else:
                self.sent += 1
                record.published_at = now
        self.save()

    def arrived(self, args: Any) -> None:
        """A heartbeat came in through the task consumer: this worker consumes."""
        now = time.time()
        self.record.received_at = self.record.healthy_at = now
        if isinstance(args, list) and len(args) == 2 and args[0] == self.run_id:
            self.seen = max(self.seen, int(args[1]))
        self.save()

    def save(self) -> None:
        try:
            write_record(self.directory, self.record)
        except OSError as exc:
            log.warning("worker_heartbeat_write_failed", error=f"{type(exc).__name__}: {exc}")


# The main process's heartbeats (None in other processes and before the consumer starts).
_beats: Heartbeats | None = None
_settings: Settings | None = None


def heartbeat_strategy(task: Any, app: Celery, consumer: Any, **_kwargs: Any) -> Any:
    """Celery task strategy: handle a heartbeat in the main process, never in the pool."""

    def on_heartbeat(
        message: Any, _body: Any, ack: Callable[..., None], *_a: Any, **_kw: Any
    ) -> None:
        try:
            args = message.payload[0]
        except Exception:  # noqa: BLE001 - a malformed heartbeat still proves consumption
            args = None
        if _beats is not None:
            _beats.arrived(args)
        ack(_celery_log, consumer.connection_errors)  # what a task Request passes

    return on_heartbeat


@celery_app.task(
    name=names.WORKERS_HEARTBEAT, ignore_result=True, Strategy=f"{__name__}:heartbeat_strategy"
)
def heartbeat(run_id: str, sequence: int) -> None:
    """A worker's liveness heartbeat (consumed by its main process: this body never runs)."""


class HeartbeatStep(bootsteps.StartStopStep):
    """Consumer bootstep: the heartbeat timer, on the worker's event loop."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.timer_entry: Any = None

    def start(self, c: Any) -> None:  # every (re)connection
        global _beats
        settings = _settings
        if settings is None:
            return
        if _beats is None:
            _beats = Heartbeats(c.hostname, settings)
            warn_if_broker_may_evict(settings.broker_url, settings.redis_sentinel_master)
        beats = _beats
        producer = c.app.amqp.Producer(c.connection, auto_declare=False)
        queue = worker_direct(c.hostname)
        send = c.app.amqp.send_task_message

        def publish(args: list[Any]) -> None:
            message = c.app.amqp.create_task_message(
                uuid.uuid4().hex, names.WORKERS_HEARTBEAT, args, {}, create_sent_event=False
            )
            # Straight to our queue, no retries (the next tick tries again), no declare
            # (the worker declared it when it started consuming).
            send(producer, names.WORKERS_HEARTBEAT, message, queue=queue, retry=False, declare=[])

        def tick() -> None:
            qos = c.qos.value if c.qos is not None else 0
            beats.tick(publish, len(worker_state.reserved_requests), qos)

        tick()
        self.timer_entry = c.timer.call_repeatedly(settings.worker_heartbeat_seconds, tick)

    def stop(self, c: Any) -> None:  # connection lost, or shutting down
        if self.timer_entry is not None:
            self.timer_entry.cancel()
            self.timer_entry = None

    def shutdown(self, c: Any) -> None:
        self.stop(c)
        if _settings is None:
            return
        remove_record(health_dir(_settings.worker_health_dir), c.hostname)
        try:  # so heartbeats of a worker that is gone do not linger in the broker
            if c.connection is not None:
                worker_direct(c.hostname)(c.connection.default_channel).delete()
        except Exception as exc:  # noqa: BLE001 - best effort; a leftover queue is harmless
            log.info("worker_heartbeat_queue_not_deleted", error=type(exc).__name__)


def broker_eviction_problem(broker_url: str, sentinel_master: str = "") -> str | None:
    """Why this Redis broker may lose routing keys, or None (fine, not Redis, or unknown).

    Eviction can delete kombu's binding keys and silently break routing (kombu#236,
    #1063): a broker Redis must run with `maxmemory-policy noeviction`. Managed Redis
    often forbids CONFIG; then we cannot tell, and say nothing. Behind Sentinel the
    current master is asked (a replica promoted later should be configured alike).
    """
    sentinel = is_sentinel_url(broker_url)
    if not sentinel and not broker_url.startswith(("redis://", "rediss://", "unix://")):
        return None
    client = redis_client(
        broker_url,
        sentinel_master if sentinel else "",
        socket_timeout=2,
        socket_connect_timeout=2,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        config = cast(dict[str, str], client.config_get("maxmemory-policy"))
        policy = config.get("maxmemory-policy")
    except redis.RedisError as exc:
        log.info("broker_eviction_policy_unknown", error=type(exc).__name__)
        return None
    finally:
        client.close()
    if policy in (None, "noeviction"):
        return None
    return (
        f"the broker Redis runs with maxmemory-policy {policy!r}: under memory pressure it "
        "may evict kombu's routing keys and tasks will silently go nowhere. Run the broker "
        "with `maxmemory-policy noeviction` (see README)."
    )


def warn_if_broker_may_evict(broker_url: str, sentinel_master: str = "") -> None:
    if problem := broker_eviction_problem(broker_url, sentinel_master):
        log.warning("broker_may_evict_keys", problem=problem)


def install(app: Celery, settings: Settings) -> None:
    """Enable the heartbeat (and the eviction check) in workers of `app`."""
    global _settings
    _settings = settings
    app.steps["consumer"].add(HeartbeatStep)
