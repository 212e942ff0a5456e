"""Celery beat's scheduler: one leader at a time, and a heartbeat operators can alert on.

Two beat processes (a deploy overlap, a second replica) would send every periodic task
twice. Each beat therefore holds a Redis lease (`SET NX PX`, renewed on every tick, only by
its holder); a beat without the lease sends nothing and tries again shortly. On a clean
exit the leader deletes its own lease, so the standby takes over within one retry instead
of waiting for the lease to expire. The leader also records each tick's time
(`beat:last_tick`), which `/metrics` exports for the "beat silent" alert.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from typing import Any, Final

from celery.beat import PersistentScheduler

from extensions import redis
from logs import get_logger
from services.jobs.metrics import BEAT_LAST_TICK_KEY

log = get_logger(__name__)

LEADER_KEY: Final = "beat:leader"
LEASE_SECONDS: Final = 30  # a crashed leader is replaced after at most this long
STANDBY_RETRY_SECONDS: Final = 2.0

# Renew or release only while the lease is still ours (compare-and-set in one step).
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


class LeaderScheduler(PersistentScheduler):  # type: ignore[misc]
    """PersistentScheduler that only sends while it holds the beat lease."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.leading = False
        self._announced: bool | None = None  # the role last logged
        super().__init__(*args, **kwargs)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        if not self._hold_lease():
            return STANDBY_RETRY_SECONDS
        redis.client.set(BEAT_LAST_TICK_KEY, f"{time.time():.3f}")
        # Never sleep past a renewal: the lease must outlive the longest sleep.
        return float(min(super().tick(*args, **kwargs), LEASE_SECONDS / 3))

    def apply_async(
        self, entry: Any, producer: Any = None, advance: bool = True, **kwargs: Any
    ) -> Any:
        """Send a due entry. A task that sends no task events (housekeeping every few
        seconds, `periodic_task(task_events=False)`) gets no `task-sent` event either, even
        with CELERY_TASK_SENT_EVENTS on: Flower would list each tick as waiting forever."""
        task = self.app.tasks.get(entry.task)
        conf = self.app.conf
        if task is None or task.send_events or not conf.task_send_sent_event:
            return super().apply_async(entry, producer, advance, **kwargs)
        # Celery decides per app, not per call; beat sends from this one thread only.
        conf.task_send_sent_event = False
        try:
            return super().apply_async(entry, producer, advance, **kwargs)
        finally:
            conf.task_send_sent_event = True

    def close(self) -> None:
        try:
            if self.leading:
                redis.client.eval(_RELEASE, 1, LEADER_KEY, self.token)
                log.info("beat_lease_released", token=self.token)
        except Exception as exc:  # noqa: BLE001 - the lease expires on its own anyway
            log.warning("beat_lease_release_failed", error=type(exc).__name__)
        super().close()

    def _hold_lease(self) -> bool:
        """Renew our lease, or take a free one; False while another beat leads."""
        client, ttl_ms = redis.client, LEASE_SECONDS * 1000
        try:
            if self.leading and client.eval(_RENEW, 1, LEADER_KEY, self.token, ttl_ms):
                return True
            acquired = bool(client.set(LEADER_KEY, self.token, nx=True, px=ttl_ms))
        except Exception as exc:  # noqa: BLE001 - Redis down: send nothing rather than twice
            log.warning("beat_lease_unavailable", error=type(exc).__name__)
            acquired = False
        if acquired != self._announced:
            log.info("beat_leading" if acquired else "beat_standby", token=self.token)
            self._announced = acquired
        self.leading = acquired
        return acquired
