"""The heartbeat a running job keeps, so the reaper can tell a dead worker from a slow one.

One daemon thread per process beats for every job running in it, each `interval` seconds
after its start: a thread started and stopped per job cost more than a short job's own
work takes (starting one waits for it to be scheduled). A prefork child starts its own thread
when it runs its first job (threads do not survive a fork).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import update

from extensions import db
from logs import get_logger
from models import Job

log = get_logger(__name__)


class Heartbeat:
    """Touches the job's `heartbeat_at` every `interval` seconds between start and stop."""

    def __init__(self, job_id: uuid.UUID, me: str, interval: float) -> None:
        self._job_id, self._me, self.interval = job_id, me, interval

    def start(self) -> None:
        _beater().add(self)

    def stop(self) -> None:
        _beater().discard(self)

    def beat(self) -> None:
        try:
            with db.engine.begin() as conn:
                conn.execute(
                    update(Job)
                    .where(Job.id == self._job_id, Job.worker == self._me)
                    .values(heartbeat_at=datetime.now(UTC))
                )
        except Exception as exc:  # noqa: BLE001 - a missed beat only risks a takeover
            log.warning("heartbeat_failed", job_id=str(self._job_id), error=type(exc).__name__)


@dataclass
class _Due:
    heartbeat: Heartbeat
    at: float  # time.monotonic() of its next beat


class _Beater:
    """The process's heartbeat thread and the jobs it beats for.

    Starting or stopping a job does not wake the thread unless the job is due before the
    thread would wake anyway (short jobs come and go without a context switch); with no
    job to beat for, it wakes once every IDLE_WAKE_SECONDS.
    """

    IDLE_WAKE_SECONDS = 1.0

    def __init__(self) -> None:
        self._due: dict[int, _Due] = {}  # id(heartbeat) -> when it beats next
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._wakes_at = float("inf")  # when the waiting thread wakes by itself

    def add(self, heartbeat: Heartbeat) -> None:
        with self._changed:
            due = time.monotonic() + heartbeat.interval
            self._due[id(heartbeat)] = _Due(heartbeat, due)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, daemon=True,
                                                name="job-heartbeat")  # fmt: skip
                self._thread.start()
            elif due < self._wakes_at:
                self._changed.notify()

    def discard(self, heartbeat: Heartbeat) -> None:
        with self._changed:
            self._due.pop(id(heartbeat), None)  # no wake-up needed: a late wake finds nothing

    def _loop(self) -> None:
        while True:
            with self._changed:
                now = time.monotonic()
                due = [d for d in self._due.values() if d.at <= now]
                for entry in due:
                    entry.at = now + entry.heartbeat.interval
                if not due:
                    nearest = min((d.at for d in self._due.values()), default=None)
                    self._wakes_at = now + self.IDLE_WAKE_SECONDS if nearest is None else nearest
                    self._changed.wait(self._wakes_at - now)
                    self._wakes_at = float("-inf")  # awake: a job added now is seen next turn
                    continue
            for entry in due:  # outside the lock: a job may start or stop meanwhile
                entry.heartbeat.beat()


_beaters: dict[int, _Beater] = {}  # pid -> that process's beater (one entry in practice)
_beaters_lock = threading.Lock()


def _beater() -> _Beater:
    """This process's beater, made on first use (a forked child makes its own)."""
    pid = os.getpid()
    beater = _beaters.get(pid)
    if beater is None:
        with _beaters_lock:
            beater = _beaters.setdefault(pid, _Beater())
    return beater


def _after_fork_in_child() -> None:
    # A lock that another thread held at the fork would stay held in the child for ever.
    global _beaters_lock
    _beaters.clear()
    _beaters_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
