"""Claiming a job row: the step that makes a delivery safe to repeat.

A delivery may run its job only if it takes the row: a queued (or retrying) job with
attempts left, or one running on a worker that is provably gone. A finished job, or one
alive elsewhere, is skipped, so a duplicate delivery is harmless; a job whose deliveries
all died is buried (`dead`) once its attempts are used up.

Two ways to take the row, both one UPDATE ... RETURNING whose row lock serialises
concurrent deliveries (the loser re-checks the row after the winner's commit and
matches nothing):
- `claim`: committed on its own before the work starts (autocommit: one round trip), so
  the job reads `running` while it runs and the attempt counts even if the worker dies;
- `claim_with_work`: left open in the work's transaction, to commit with the work's
  first commit (for short jobs: one commit per job instead of two; see jobs.runner).
"""

from __future__ import annotations

import os
import socket
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from flask import current_app
from sqlalchemy import Row, Table, bindparam, func, select, update

from extensions import db
from logs import get_logger
from models import Job
from models.job import RUNNABLE
from services.jobs import signals
from services.jobs.context import JobContext

log = get_logger(__name__)

_JOBS = cast(Table, Job.__table__)
_C = _JOBS.c
# Core, built once, returning only what the runner uses: loading a whole `Job` through
# the ORM (every column, the identity map) cost more CPU than the statement itself.
_CLAIM = (
    update(_JOBS)
    .where(_C.id == bindparam("job_id"), _C.status.in_(sorted(RUNNABLE)),
           _C.attempts < _C.max_attempts)
    .values(status="running", attempts=_C.attempts + 1, worker=bindparam("me"),
            heartbeat_at=bindparam("now"),
            started_at=func.coalesce(_C.started_at, bindparam("now")),
            # A delivered job was published: the claim marks it so if the publisher's
            # batched mark has not landed yet (jobs.outbox); that mark then matches nothing.
            published_at=func.coalesce(_C.published_at, bindparam("now")))
    .returning(_C.id, _C.type, _C.args, _C.attempts, _C.user_id, _C.team_id,
               _C.request_id, _C.result, _C.progress)
)  # fmt: skip
_AUTOCOMMIT = {"isolation_level": "AUTOCOMMIT"}


def worker_id() -> str:
    # Computed per call: a prefork child has its own pid, not the parent's.
    return f"{socket.gethostname()}:{os.getpid()}"


def claim(job_id: uuid.UUID, me: str) -> JobContext | None:
    """Mark the job running for this worker and commit that before the work starts, or
    None if it must not run here now."""
    session = db.session
    now = datetime.now(UTC)
    autocommit = not session().in_transaction()
    # The usual claim is one statement and was committed right after it: in autocommit it
    # is its own transaction, the same commit in one round trip instead of three (BEGIN,
    # UPDATE, COMMIT). The work then runs in a transaction of its own.
    conn = session.connection(execution_options=_AUTOCOMMIT if autocommit else None)
    row = conn.execute(_CLAIM, {"job_id": job_id, "me": me, "now": now}).first()
    if row is not None:
        job = running(row)
        signals.row_changed.send(job)
    else:
        if autocommit:
            session.commit()  # nothing was changed; what follows needs a real transaction
        unusual = _claim_unusual(job_id, me, now)
        if unusual is None:
            return None
        job = unusual
    session.commit()  # (autocommit: no round trip, only the after-commit hooks)
    signals.status_changed.send(job)  # realtime `job.progress` (running), after the commit
    return context(job, me)


def claim_with_work(job_id: uuid.UUID, me: str) -> tuple[JobContext, Job] | None:
    """Mark a queued (or retrying) job running in the session's transaction, left open:
    the claim commits with the work. None, with nothing changed, if the job is not one
    that the usual claim would take (`claim` then decides what to do with it).

    Until that commit the row stays locked and reads as before (`queued`): a duplicate
    delivery waits for the commit and then finds the job finished. Returns the context
    and the row as claimed, for the caller to announce once the claim has committed."""
    session = db.session
    params = {"job_id": job_id, "me": me, "now": datetime.now(UTC)}
    row = session.connection().execute(_CLAIM, params).first()
    if row is None:
        session.rollback()
        return None
    job = running(row)
    signals.row_changed.send(job)
    return context(job, me), job


def running(row: Row[Any]) -> Job:
    """The claimed row's values as a `Job` (not in the session) for the signals."""
    return Job(id=row.id, type=row.type, status="running", user_id=row.user_id,
               team_id=row.team_id, progress=row.progress, attempts=row.attempts,
               args=row.args, request_id=row.request_id, result=row.result,
               error=None)  # fmt: skip


def context(job: Job, me: str) -> JobContext:
    return JobContext(
        job.id, dict(job.args), job.attempts, job.user_id, job.team_id, me, job.request_id,
        job.type, earlier_result=job.result,
    )  # fmt: skip


def _claim_unusual(job_id: uuid.UUID, me: str, now: datetime) -> Job | None:
    """Everything but the usual claim: a missing or finished job, one running elsewhere
    (taken over if its worker is gone), a poison job out of attempts."""
    session = db.session
    job = session.scalar(select(Job).where(Job.id == job_id).with_for_update())
    if job is None:
        session.rollback()
        log.warning("job_missing", job_id=str(job_id))
        return None
    if not (job.status in RUNNABLE or (job.status == "running" and _owner_is_gone(job))):
        session.rollback()
        log.info("job_skipped", job_id=str(job_id), status=job.status)
        return None
    if job.attempts >= job.max_attempts:
        # Each delivery that died mid-run counted an attempt: a poison job stops here.
        job.status, job.finished_at = "dead", now
        job.error = job.error or "Gave up: the worker died on every attempt."
        session.commit()
        log.error("job_dead", job_id=str(job_id), attempts=job.attempts)
        signals.status_changed.send(job)  # realtime `job.finished` (dead), after the commit
        return None
    job.status = "running"
    job.attempts += 1
    job.worker = me
    job.heartbeat_at = now
    job.started_at = job.started_at or now
    job.published_at = job.published_at or now  # delivered, so published (see _CLAIM)
    return job


def _owner_is_gone(job: Job) -> bool:
    """A running job may be taken over if its worker stopped heartbeating or is dead here."""
    stale = current_app.config["SETTINGS"].job_stale_seconds
    if job.heartbeat_at is None or job.heartbeat_at < datetime.now(UTC) - timedelta(seconds=stale):
        return True
    host, _, pid = (job.worker or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)  # the previous owner ran on this host: is it still alive?
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
