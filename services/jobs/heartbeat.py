"""The heartbeat a running job keeps, so the reaper can tell a dead worker from a slow one."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime

from sqlalchemy import update

from extensions import db
from logs import get_logger
from models import Job

log = get_logger(__name__)


class Heartbeat:
    """A daemon thread that touches `heartbeat_at` while the job runs."""

    def __init__(self, job_id: uuid.UUID, me: str, interval: float) -> None:
        self._job_id, self._me, self._interval = job_id, me, interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="job-heartbeat")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def _loop(self) -> None:
        while not self._stopped.wait(self._interval):
            try:
                with db.engine.begin() as conn:
                    conn.execute(
                        update(Job)
                        .where(Job.id == self._job_id, Job.worker == self._me)
                        .values(heartbeat_at=datetime.now(UTC))
                    )
            except Exception as exc:  # noqa: BLE001 - a missed beat only risks a takeover
                log.warning("heartbeat_failed", job_id=str(self._job_id), error=type(exc).__name__)
