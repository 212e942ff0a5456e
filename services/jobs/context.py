"""What a task body gets: its job's id, arguments, a progress reporter, and a way to
record an outside effect at once so a rerun does not repeat it."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import update
from sqlalchemy.exc import DBAPIError

from extensions import db
from models import Job
from services.jobs import metrics as task_metrics
from services.jobs import signals
from services.jobs.errors import JobCancelled

# Realtime `job.progress` events: at most one per job this often (the last report always
# goes out). Progress is still written to the database on every call.
PROGRESS_EVENT_INTERVAL = 0.5


@dataclass
class JobContext:
    """What a task body gets: its job's id, arguments and a progress reporter."""

    job_id: uuid.UUID
    args: dict[str, Any]
    attempt: int
    user_id: uuid.UUID | None
    team_id: uuid.UUID | None
    worker: str
    request_id: str | None = None
    job_type: str = ""
    # The job row's `result` when this attempt claimed it: what an earlier attempt
    # recorded with `record_external_effect`, if anything.
    earlier_result: dict[str, Any] | None = None
    # True while the claim waits to commit with the work's first commit (a folded claim,
    # see jobs.runner): until then the row is locked by this job's own transaction and
    # reads as not started, so nothing may touch it from another connection.
    claim_pending: bool = field(default=False, init=False, repr=False)
    _progress_announced_at: float = field(default=float("-inf"), init=False, repr=False)
    stopwatch: task_metrics.Stopwatch = field(
        default_factory=task_metrics.Stopwatch, init=False, repr=False
    )

    def progress(self, percent: int) -> None:
        """Record progress (visible at once) and stop if cancellation was requested."""
        if self.claim_pending:
            # Nothing of this job is visible before its claim commits, its progress neither,
            # and no cancellation can be requested meanwhile (it waits for the row lock).
            return
        stored = max(0, min(99, percent))
        with db.engine.begin() as conn:
            row = conn.execute(
                update(Job)
                .where(Job.id == self.job_id, Job.worker == self.worker)
                .values(progress=stored, heartbeat_at=datetime.now(UTC))
                .returning(Job.cancel_requested_at)
            ).first()
        # No row: another worker owns the job now (same as before: no cancel, no event).
        cancel_requested = row.cancel_requested_at if row is not None else None
        if cancel_requested is not None:
            raise JobCancelled()
        if row is not None:
            self._announce_progress(stored, final=percent >= 100)  # after the commit above

    def _announce_progress(self, stored: int, *, final: bool) -> None:
        """Realtime `job.progress` to the owner, throttled (best-effort, never raises)."""
        now = time.monotonic()
        if self.user_id is None or (
            not final and now - self._progress_announced_at < PROGRESS_EVENT_INTERVAL
        ):
            return
        self._progress_announced_at = now
        signals.announce_progress(self.user_id, self.job_id, self.job_type, stored, "running")


def record_external_effect(
    ctx: JobContext, result: dict[str, Any], give_up_after: float = 60
) -> None:
    """Persist at once that this job's outside effect (an email handed to SMTP) happened.

    The job's own commit comes later and may fail (PostgreSQL restarting): the job would
    then run again and repeat an effect that cannot be rolled back. This commits `result`
    on the job row by itself, retrying while the database is unreachable, so a rerun
    finds it (`ctx.earlier_result`) and does not repeat it. Only a worker killed in the
    moment between the effect and this commit can still repeat it.
    """
    if ctx.claim_pending:
        # The job row is locked by the job's own open transaction: this commit would wait
        # for it for ever. A job with outside effects must claim before its work.
        raise RuntimeError("record_external_effect in a job whose claim commits with its work")
    deadline = time.monotonic() + give_up_after
    while True:
        try:
            with db.engine.begin() as conn:
                conn.execute(update(Job).where(Job.id == ctx.job_id).values(result=result))
            return
        except DBAPIError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


TaskBody = Callable[[JobContext], dict[str, Any] | None]
