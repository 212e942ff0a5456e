"""Dead letters: jobs that failed for good, and what operators do about them.

A job is `dead` when its retries ran out and `failed` when it hit a permanent error. An
operator can read one with its traceback, replay it or every one of a type, or discard
it. Replays go through the outbox like new jobs (`send_after_commit`, so a broker outage
only delays them), and every action is audited in the transaction that makes it. The
admin API and `flask jobs` both call these functions; `via` records which one did.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from flask import current_app
from sqlalchemy import ColumnElement, func, select, update

from extensions import celery_app, db
from models import Job
from services.core.audit import record_audit
from services.core.commit_hooks import after_commit
from services.core.errors import Conflict, NotFound, ValidationFailed
from services.jobs import signals
from services.jobs.outbox import send_after_commit

Via = Literal["api", "cli"]
ReplayableStatus = Literal["dead", "failed"]
REPLAYABLE: tuple[ReplayableStatus, ...] = ("dead", "failed")
# One bulk replay touches at most this many rows: one short transaction, and at most this
# many messages published after its commit. Callers repeat while `remaining` > 0.
RETRY_ALL_MAX = 1000
_ERROR_IN_AUDIT = 500  # characters of the last error kept with an audit row


@dataclass(frozen=True)
class BulkReplay:
    job_ids: list[uuid.UUID]
    remaining: int  # still matching afterwards (rows locked by a concurrent action excluded)


def inspect_job(job_id: uuid.UUID) -> Job:
    """Any job, for operators (the caller decides who may see its traceback)."""
    job = db.session.get(Job, job_id)
    if job is None:
        raise NotFound("No such job.")
    return job


def is_discarded(job: Job) -> bool:
    return job.status == "cancelled" and bool((job.result or {}).get("discarded"))


def retry_job(job_id: uuid.UUID, *, actor_id: uuid.UUID | None, via: Via) -> Job:
    """Replay one dead or failed job with a fresh set of attempts."""
    job = _locked(job_id)
    if job.status not in REPLAYABLE:
        if is_discarded(job):
            raise Conflict("This job was discarded; it cannot be retried.")
        raise Conflict(f"Only dead or failed jobs can be retried (this one is {job.status}).")
    if job.type not in celery_app.tasks:
        raise Conflict(f"No task {job.type!r} exists any more; discard the job instead.")
    history = _history(job)
    _replay(Job.id == job.id)
    record_audit(
        "job.retried",
        actor_id=actor_id,
        team_id=job.team_id,
        subject_type="job",
        subject_id=job.id,
        data={**history, "via": via},
    )
    after_commit(lambda: signals.announce_status(job))
    db.session.commit()
    return job


def retry_all(
    type_: str,
    *,
    status: ReplayableStatus = "dead",
    limit: int = RETRY_ALL_MAX,
    finished_before: datetime | None = None,
    actor_id: uuid.UUID | None,
    via: Via,
) -> BulkReplay:
    """Replay up to `limit` jobs of one type in one status, oldest first; audited once.

    `finished_before` leaves out jobs that finished after it, so a caller looping until
    nothing remains never replays a job that died again during its own loop.
    """
    if type_ not in celery_app.tasks:
        raise ValidationFailed(
            f"No task {type_!r} exists.", errors={"type": ["Use a task name, e.g. exports.build."]}
        )
    if status not in REPLAYABLE:
        raise ValidationFailed(
            "Only dead or failed jobs can be retried.", errors={"status": ["One of: dead, failed."]}
        )
    limit = max(1, min(limit, RETRY_ALL_MAX))
    conditions = [Job.status == status, Job.type == type_]
    if finished_before is not None:
        conditions.append(Job.finished_at <= finished_before)
    # SKIP LOCKED: a job someone is retrying or discarding right now is left to them.
    batch = (
        select(Job.id).where(*conditions).order_by(Job.finished_at, Job.id).limit(limit)
        .with_for_update(skip_locked=True)
    )  # fmt: skip
    replayed = _replay(Job.id.in_(batch))
    remaining = int(db.session.scalar(select(func.count()).where(*conditions)) or 0)
    if not replayed:
        db.session.rollback()  # nothing changed: nothing to audit
        return BulkReplay([], remaining)
    record_audit(
        "job.retried_bulk",
        actor_id=actor_id,
        subject_type="job_type",
        subject_id=type_,
        data={"status": status, "count": len(replayed), "via": via},
    )
    db.session.commit()
    return BulkReplay([job.id for job in replayed], remaining)


def discard_job(
    job_id: uuid.UUID, *, actor_id: uuid.UUID | None, via: Via, reason: str | None = None
) -> Job:
    """Take a dead job off the dead-letter list for good; it stays in the ledger as history.

    The status becomes `cancelled` (the ledger has no `discarded` status) and the result
    says it was discarded, by whom and why; attempts, error and traceback are kept.
    """
    job = _locked(job_id)
    if job.status != "dead":
        raise Conflict(f"Only dead jobs can be discarded (this one is {job.status}).")
    history = _history(job)
    job.status = "cancelled"
    job.result = {
        "discarded": True,
        "discarded_by": str(actor_id) if actor_id is not None else via,
        "discarded_at": datetime.now(UTC).isoformat(),
        "reason": reason,
    }
    record_audit(
        "job.discarded",
        actor_id=actor_id,
        team_id=job.team_id,
        subject_type="job",
        subject_id=job.id,
        data={**history, "via": via, "reason": reason},
    )
    after_commit(lambda: signals.announce_status(job))
    db.session.commit()
    return job


def _locked(job_id: uuid.UUID) -> Job:
    job = db.session.scalar(select(Job).where(Job.id == job_id).with_for_update())
    if job is None:
        raise NotFound("No such job.")
    return job


def _history(job: Job) -> dict[str, Any]:
    """What the audit row keeps of the job's failure (the row itself changes)."""
    error = job.error[:_ERROR_IN_AUDIT] if job.error else None
    return {"previous_status": job.status, "attempts": job.attempts, "error": error}


def _replay(where: ColumnElement[bool]) -> list[Job]:
    """Re-queue the matching jobs in one UPDATE; their messages go out after the commit.

    Attempts keep counting (the history stays true) and the replay gets a fresh
    allowance on top. A stale cancel request must not stop the replay. The last error
    and traceback stay until the replay settles (success clears them, failure replaces).
    """
    fresh = current_app.config["SETTINGS"].task_max_attempts
    statement = (
        update(Job)
        .where(where)
        .values(
            status="queued",
            progress=0,
            max_attempts=Job.attempts + fresh,
            run_after=datetime.now(UTC),
            finished_at=None,
            worker=None,
            heartbeat_at=None,
            published_at=None,
            cancel_requested_at=None,
        )
        .returning(Job)
        .execution_options(synchronize_session=False, populate_existing=True)
    )
    jobs = list(db.session.scalars(statement))
    for job in jobs:
        send_after_commit(db.session(), job)
    return jobs
