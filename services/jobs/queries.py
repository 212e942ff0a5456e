"""The job ledger as users and operators see it: read, list, cancel, start a probe.

Users reach their own jobs; another user's job is reachable only by an operator signed in
with a token (`operator=True`): an API key stays within its owner's own things, whoever
owns it. Only work a user started and that can stop half-way without harm may be
cancelled (`CANCELLABLE`); email, payments, security and system jobs run to their end.
Replaying and discarding jobs that failed for good lives in `services.jobs.dead_letters`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from psycopg.rows import class_row
from sqlalchemy import Select, bindparam, select

from extensions import Read, db
from models import Job, User
from models.job import RUNNABLE
from services.core.audit import record_audit
from services.core.commit_hooks import after_commit
from services.core.errors import Conflict, NotFound
from services.core.pagination import Page, paginate
from services.jobs import names, signals
from services.jobs.outbox import enqueue

# Job types a user may cancel: work they asked for whose cancellation only means "not
# needed any more" (an export fails as cancelled, a team's aggregation waits for the next
# run, an operator's probe stops). Everything else, above all the emails, payments,
# refunds, subscription changes, uploads and account or team deletions that a user's
# requests set off, must run to the end: half of it would leave a lie behind.
CANCELLABLE = frozenset({names.EXPORTS_BUILD, names.ANALYTICS_AGGREGATE, names.MAINTENANCE_PING})


@dataclass(frozen=True, slots=True)
class JobView:
    """What a job's owner is shown (blueprints.jobs.schemas.JobOut), and whose it is."""

    id: uuid.UUID
    type: str
    status: str
    progress: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    attempts: int
    error: str | None
    result: dict[str, Any] | None
    user_id: uuid.UUID | None


# Compiled once on the table's plain columns: building a statement per request, and the
# ORM's annotated columns, cost more CPU than running it.
_JOBS = Job.__table__.c
_READ_STATUS = Read.of(
    select(
        _JOBS.id, _JOBS.type, _JOBS.status, _JOBS.progress, _JOBS.created_at, _JOBS.started_at,
        _JOBS.finished_at, _JOBS.attempts, _JOBS.error, _JOBS.result, _JOBS.user_id,
    ).where(_JOBS.id == bindparam("job_id")),
    class_row(JobView),
)  # fmt: skip


def read_job_status(user: User, job_id: uuid.UUID, *, operator: bool = False) -> JobView:
    """A job the user started, or any job for an `operator` (is_admin, signed in with a
    token); other jobs are 404 (their existence is not leaked). The read clients poll
    while they wait, so it is the least it can be: the columns its owner is shown, one
    SELECT in autocommit on a pooled connection (`db.read_one`), no ORM object."""
    job = db.read_one(_READ_STATUS, {"job_id": job_id})
    if job is None or not _reachable(job, user, operator):
        raise NotFound("No such job.")
    return job


def _reachable(job: Job | JobView, user: User, operator: bool) -> bool:
    return job.user_id == user.id or (operator and user.is_admin)


def list_jobs(
    user: User, *, status: str | None, type_: str | None, limit: int, cursor: str | None
) -> Page[Job]:
    """The user's own jobs, newest first."""
    return paginate(_filtered(user.id, status, type_), Job, limit, cursor)


def cancel_job(user: User, job_id: uuid.UUID, *, operator: bool = False) -> Job:
    """Cancel a queued job now, or ask a running one to stop at its next progress report
    (only the types in CANCELLABLE; see get_job for whose)."""
    job = db.session.scalar(select(Job).where(Job.id == job_id).with_for_update())
    if job is None or not _reachable(job, user, operator):
        raise NotFound("No such job.")
    if job.type not in CANCELLABLE:
        raise Conflict(
            f"A {job.type} job cannot be cancelled: it runs to its end. Only exports,"
            " on-demand analytics runs and probes can be cancelled."
        )
    if job.is_finished:
        raise Conflict(f"The job has already finished ({job.status}).")
    now = datetime.now(UTC)
    if job.status in RUNNABLE:
        job.status, job.finished_at = "cancelled", now
    job.cancel_requested_at = now
    record_audit(
        "job.cancelled",
        actor_id=user.id,
        team_id=job.team_id,
        subject_type="job",
        subject_id=job.id,
    )
    after_commit(lambda: signals.announce_status(job))
    db.session.commit()
    return job


def start_ping(admin: User, *, sleep_seconds: float, fail_attempts: int) -> Job:
    """Enqueue the `maintenance.ping` probe (admins). One transaction."""
    job = enqueue(
        names.MAINTENANCE_PING,
        args={"sleep_seconds": sleep_seconds, "fail_attempts": fail_attempts},
        user_id=admin.id,
    )
    record_audit(
        "job.started",
        actor_id=admin.id,
        subject_type="job",
        subject_id=job.id,
        data={"type": job.type},
    )
    db.session.commit()
    return job


def list_jobs_admin(
    *, status: str | None, type_: str | None, limit: int, cursor: str | None
) -> Page[Job]:
    """Every user's jobs (operators), e.g. the dead-letter list with status=dead."""
    return paginate(_filtered(None, status, type_), Job, limit, cursor)


def _filtered(user_id: uuid.UUID | None, status: str | None, type_: str | None) -> Select[Job]:
    query = select(Job)
    if user_id is not None:
        query = query.where(Job.user_id == user_id)
    if status:
        query = query.where(Job.status == status)
    if type_:
        query = query.where(Job.type == type_)
    return query
