"""Celery beat's scheduler: one shared schedule in PostgreSQL, one sending beat at a time,
and a heartbeat operators can alert on.

Every entry whose task is a job (`job_task`: reports, reconciliation, aggregation,
clean-ups) is on the shared schedule (services/jobs/schedule.py): when a period of it
begins (tasks/runtime/beat_periods.py), the beat claims that period in `beat_entries` and
writes its job in the same transaction. A beat that takes over reads where its
predecessor stopped, and a period another beat claimed is never sent again, so
correctness does not rest on the lease below. Nothing is kept on the beat's host: no
`--schedule` file.

The housekeeping ticks every few seconds (`periodic_task`: the outbox relay, the reaper,
the audit sealer) are Celery's in-memory schedule, sent by the leader only. Recording them
would cost a write per tick for nothing: a duplicate run of any of them is harmless by
design, and one missed around a hand-over is made up by the next a few seconds later.

Leadership: each beat holds a Redis lease (`SET NX PX`, BEAT_LEASE_SECONDS, renewed on
every tick, only by its holder); a beat without it sends nothing and asks again every
BEAT_STANDBY_RETRY_SECONDS. It spares the beats from racing for every period and keeps the
housekeeping single. On a clean exit the leader deletes its own lease, so the standby
takes over within one retry instead of waiting for the lease to expire. The leader also
records each tick's time (`beat:last_tick`), which `/metrics` exports for the "beat
silent" alert.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from datetime import UTC, datetime
from typing import Any, Final

from celery.beat import ScheduleEntry, Scheduler
from flask import Flask

from extensions import db, redis
from logs import get_logger
from services.jobs import schedule
from services.jobs.metrics import BEAT_LAST_TICK_KEY
from tasks.runtime import beat_periods

log = get_logger(__name__)

LEADER_KEY: Final = "beat:leader"

# Renew or release only while the lease is still ours (compare-and-set in one step).
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""

_flask_app: Flask | None = None


def install(app: Flask) -> None:
    """The Flask app whose database and settings the scheduler uses (make_celery.py)."""
    global _flask_app
    _flask_app = app


class LeaderScheduler(Scheduler):  # type: ignore[misc]
    """Sends while it holds the beat lease: each shared entry's periods once across all
    beats, the housekeeping ticks from memory."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if _flask_app is None:
            raise RuntimeError("beat needs the app: start it with -A make_celery:celery_app")
        self.flask_app = _flask_app
        settings = _flask_app.config["SETTINGS"]
        self.lease_seconds: float = settings.beat_lease_seconds
        self.standby_retry: float = settings.beat_standby_retry_seconds
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.leading = False
        self._announced: bool | None = None  # the role last logged
        self.shared: dict[str, ScheduleEntry] = {}
        # What this beat knows of `beat_entries` (entry -> latest period sent); read again
        # whenever it takes the lease, since another beat may have sent since.
        self._last_periods: dict[str, datetime] | None = None
        super().__init__(*args, **kwargs)

    def merge_inplace(self, b: dict[str, dict[str, Any]]) -> None:
        """Split the configured entries: jobs go to the shared schedule, the rest to
        Celery's in-memory one."""
        local = {}
        for name, spec in b.items():
            task = self.app.tasks.get(spec["task"])
            if getattr(task, "runs_as_job", False):
                self.shared[name] = self._shared_entry(name, spec)
            else:
                local[name] = spec
        super().merge_inplace(local)

    def _shared_entry(self, name: str, spec: dict[str, Any]) -> ScheduleEntry:
        entry = self.Entry(**dict(spec, name=name, app=self.app))
        beat_periods.check(entry.schedule)
        # A job takes its arguments by name (its args), and its message is the outbox's.
        expires = entry.options.get("expires", 0)
        if entry.args or set(entry.options) - {"expires"} or not isinstance(expires, int | float):
            raise ValueError(
                f"beat entry {name!r} runs a job: give it kwargs only, and no option but "
                f"`expires` in seconds (got args {entry.args!r}, options {entry.options!r})"
            )
        return entry  # type: ignore[no-any-return]

    def tick(self, *args: Any, **kwargs: Any) -> float:
        if not self._hold_lease():
            return self.standby_retry
        redis.client.set(BEAT_LAST_TICK_KEY, f"{time.time():.3f}")
        wait = min(self._send_shared(), super().tick(*args, **kwargs))
        # Never sleep past a renewal: the lease must outlive the longest sleep.
        return float(min(wait, self.lease_seconds / 3))

    def _send_shared(self) -> float:
        """Send each shared entry whose new period has begun; seconds until the next
        period of any begins. The database is read only when a period begins (and when
        this beat takes the lease), not on every tick."""
        if not self.shared:
            return float(self.max_interval)
        now = datetime.now(UTC)
        with self.flask_app.app_context():
            try:
                if self._last_periods is None:
                    tasks = {name: entry.task for name, entry in self.shared.items()}
                    self._last_periods = schedule.last_periods(tasks, now)
            except Exception as exc:  # noqa: BLE001 - no database: send nothing, ask again soon
                db.session.rollback()
                log.warning("beat_schedule_unavailable", error=type(exc).__name__)
                return self.standby_retry
            retry = False
            for name, entry in self.shared.items():
                period = beat_periods.latest_start(entry.schedule, self._last_periods[name], now)
                if period is not None and not self._send_period(entry, period):
                    retry = True
        # From the time now, not the tick's start: the claims may have taken a while.
        now = datetime.now(UTC)
        wait = min((beat_periods.next_start(e.schedule, now) - now).total_seconds()
                   for e in self.shared.values())  # fmt: skip
        return min(wait, self.standby_retry) if retry else wait

    def _send_period(self, entry: ScheduleEntry, period: datetime) -> bool:
        """Claim and send one period of `entry`; False if the database could not be
        reached (the claim is one transaction: nothing was half sent)."""
        assert self._last_periods is not None
        try:
            claim = schedule.claim_period(
                entry.name, entry.task, period, kwargs=entry.kwargs,
                expires_in=entry.options.get("expires"), sent_by=self.token,
            )  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - the next tick tries again
            db.session.rollback()
            log.warning("beat_send_failed", entry=entry.name, period=period.isoformat(),
                        error=type(exc).__name__)  # fmt: skip
            return False
        self._last_periods[entry.name] = claim.last_period
        if claim.job_id is not None:
            log.info("beat_sent", entry=entry.name, task=entry.task, period=period.isoformat(),
                     job_id=str(claim.job_id))  # fmt: skip
        else:
            log.info("beat_period_already_sent", entry=entry.name, period=period.isoformat(),
                     last_period=claim.last_period.isoformat())  # fmt: skip
        return True

    def apply_async(
        self, entry: Any, producer: Any = None, advance: bool = True, **kwargs: Any
    ) -> Any:
        """Send a due housekeeping entry. A task that sends no task events
        (`periodic_task(task_events=False)`) gets no `task-sent` event either, even with
        CELERY_TASK_SENT_EVENTS on: Flower would list each tick as waiting forever."""
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
        client, ttl_ms = redis.client, int(self.lease_seconds * 1000)
        try:
            if self.leading and client.eval(_RENEW, 1, LEADER_KEY, self.token, ttl_ms):
                return True
            acquired = bool(client.set(LEADER_KEY, self.token, nx=True, px=ttl_ms))
        except Exception as exc:  # noqa: BLE001 - Redis down: no leader, nothing sent; the
            # shared schedule then sends each entry's latest missed period once Redis is back.
            log.warning("beat_lease_unavailable", error=type(exc).__name__)
            acquired = False
        if acquired != self._announced:
            log.info("beat_leading" if acquired else "beat_standby", token=self.token)
            self._announced = acquired
        if acquired and not self.leading:
            self._last_periods = None  # another beat may have sent meanwhile: read again
        self.leading = acquired
        return acquired
