"""The one way to declare a job-backed task: `@job_task("domain.verb")`.

Every task goes through `run_job`, which makes it safe to deliver twice:
1. claim the job row (queued/retrying, or running on a worker that is provably dead);
   a finished job or one alive elsewhere is skipped, so redelivery is harmless;
2. heartbeat while running, so the reaper can tell a dead worker from a slow one;
3. run the work in a session and commit its effects TOGETHER with `succeeded`, so a
   crash before the commit leaves neither (the redelivery redoes both, once);
4. on error: retry with exponential backoff and jitter (the delay is bounded far below
   the broker's visibility timeout), then `dead`; `PermanentError` fails at once.
"""

from __future__ import annotations

import os
import random
import socket
import traceback
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import Task
from flask import current_app
from sqlalchemy import bindparam, func, select, update
from sqlalchemy.exc import DBAPIError, OperationalError

from extensions import celery_app, db
from logs import bind_request_id, get_logger
from models import Job
from models.job import RUNNABLE
from services.core import redis_batch
from services.jobs import metrics as task_metrics
from services.jobs import signals
from services.jobs.context import JobContext, TaskBody
from services.jobs.errors import DatabaseUnavailable, JobCancelled, PermanentError
from services.jobs.heartbeat import Heartbeat
from services.jobs.outbox import send_after_commit

log = get_logger(__name__)


def job_task(
    name: str, *, permanent: tuple[type[Exception], ...] = ()
) -> Callable[[TaskBody], Task]:
    """Register `body` as the Celery task `name`, run through `run_job`.

    `permanent`: exceptions that fail the job at once, like `PermanentError`. It is how a
    task maps a lower layer's "retrying cannot help" (a gateway refusing the request as
    invalid) without that layer knowing about jobs.
    """
    permanent_errors: tuple[type[Exception], ...] = (PermanentError, *permanent)

    def decorator(body: TaskBody) -> Task:
        def run(self: Task, job_id: str) -> None:
            request_id = (self.request.headers or {}).get("request_id")
            try:
                run_job(body, job_id, request_id=request_id, permanent=permanent_errors)
            except DatabaseUnavailable as exc:
                # The job row could not even be read: acking this delivery (what Celery
                # does with a task that raised) would leave the job `queued` with no
                # message anywhere. Send it again shortly instead; the claim decides then.
                raise self.retry(countdown=backoff_seconds(self.request.retries + 1),
                                 max_retries=None, exc=exc) from exc  # fmt: skip

        run.__doc__ = body.__doc__
        # max_retries=None: Celery's own retry is used only for a claim that could not
        # reach the database (above), and that must go on until the database is back.
        task = celery_app.task(name=name, bind=True, acks_late=True, ignore_result=True,
                               max_retries=None)  # fmt: skip
        return task(run)  # type: ignore[no-any-return]

    return decorator


def worker_id() -> str:
    # Computed per call: a prefork child has its own pid, not the parent's.
    return f"{socket.gethostname()}:{os.getpid()}"


def run_job(
    body: TaskBody,
    job_id: str,
    *,
    request_id: str | None = None,
    permanent: tuple[type[Exception], ...] = (PermanentError,),
) -> None:
    """Claim, run and settle one job; safe to call any number of times for the same id."""
    me = worker_id()
    # The claim's Redis writes after its commit (dashboard bump, realtime `running`, the
    # `started` metric) go out in one round trip, and so do the settle's below.
    with redis_batch.batch():
        try:
            ctx = _claim(uuid.UUID(job_id), me)
        except DBAPIError as exc:
            db.session.rollback()
            if exc.connection_invalidated or isinstance(exc, OperationalError):
                raise DatabaseUnavailable(str(exc.orig)) from exc
            raise
        if ctx is None:
            return
        bind_request_id(request_id or ctx.request_id)
        log.info("job_started", job_id=job_id, attempt=ctx.attempt)
        task_metrics.record(ctx.job_type, "started")
    beat = Heartbeat(ctx.job_id, me, current_app.config["SETTINGS"].job_heartbeat_seconds)
    beat.start()
    try:
        result = body(ctx)
    except Exception as exc:  # noqa: BLE001 - every failure of a body is recorded and settled
        # (A BaseException such as a hard shutdown propagates: the row stays `running`
        # under this worker, and the redelivery or the reaper takes it over.)
        beat.stop()
        db.session.rollback()
        with redis_batch.batch():
            _settle_failure(ctx, me, exc, permanent)
        return
    finally:
        beat.stop()
    with redis_batch.batch():
        _settle_success(ctx, me, result)


# The two statements every job runs, built once (building and keying a statement costs
# more than the database takes to run it). Each is one UPDATE ... RETURNING instead of
# SELECT ... FOR UPDATE, a check and an UPDATE. Their row lock serialises a concurrent
# delivery the same way: it re-checks the row after our commit and matches nothing. The
# ORM's session synchronisation is off: RETURNING refreshes the one object they touch.
_RETURNING_JOB = {"populate_existing": True, "synchronize_session": False}
# The usual delivery: a queued (or retrying) job with attempts left. A delivered job was
# published: the claim marks it so if the publisher's batched mark has not landed yet
# (jobs.outbox), so that mark is never needed once a worker has the job.
_CLAIM = (
    update(Job)
    .where(Job.id == bindparam("job_id"), Job.status.in_(sorted(RUNNABLE)),
           Job.attempts < Job.max_attempts)
    .values(status="running", attempts=Job.attempts + 1, worker=bindparam("me"),
            heartbeat_at=bindparam("now"),
            started_at=func.coalesce(Job.started_at, bindparam("now")),
            published_at=func.coalesce(Job.published_at, bindparam("now")))
    .returning(Job)
    .execution_options(**_RETURNING_JOB)
)  # fmt: skip
# Success, only while this worker still owns the job (the reaper may have taken it over).
_SUCCEED = (
    update(Job)
    .where(Job.id == bindparam("job_id"), Job.status == "running", Job.worker == bindparam("me"))
    .values(status="succeeded", progress=100, result=bindparam("result", type_=Job.result.type),
            finished_at=bindparam("now"), error=None, traceback=None)
    .returning(Job)
    .execution_options(**_RETURNING_JOB)
)  # fmt: skip


def _claim(job_id: uuid.UUID, me: str) -> JobContext | None:
    """Mark the job running for this worker, or None if it must not run here now."""
    session = db.session
    now = datetime.now(UTC)
    autocommit = not session().in_transaction()
    if autocommit:
        # The usual claim is one statement and was committed right after it: in autocommit
        # it is its own transaction, the same commit in one round trip instead of three
        # (BEGIN, UPDATE, COMMIT). The work then runs in a transaction of its own, as before.
        session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
    job = session.scalar(_CLAIM, {"job_id": job_id, "me": me, "now": now})
    if job is not None:
        signals.row_changed.send(job)
    else:
        if autocommit:
            session.commit()  # nothing was changed; what follows needs a real transaction
        job = _claim_unusual(job_id, me, now)
        if job is None:
            return None
    session.commit()  # (autocommit: no round trip, only the after-commit hooks)
    signals.status_changed.send(job)  # realtime `job.progress` (running), after the commit
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


def _locked_own_job(ctx: JobContext, me: str) -> Job | None:
    """The job row, locked, if this worker still owns it (the reaper may have taken it)."""
    job = db.session.scalar(select(Job).where(Job.id == ctx.job_id).with_for_update())
    if job is None or job.status != "running" or job.worker != me:
        log.warning("job_lost_ownership", job_id=str(ctx.job_id))
        return None
    return job


def _settle_success(ctx: JobContext, me: str, result: dict[str, Any] | None) -> None:
    params = {"job_id": ctx.job_id, "me": me, "result": result, "now": datetime.now(UTC)}
    job = db.session.scalar(_SUCCEED, params)
    if job is None:
        log.warning("job_lost_ownership", job_id=str(ctx.job_id))
        db.session.rollback()  # someone else owns it now: drop our effects, theirs count
        return
    signals.row_changed.send(job)
    db.session.commit()  # the work's effects and `succeeded`, atomically
    log.info("job_succeeded", job_id=str(ctx.job_id), attempt=ctx.attempt)
    task_metrics.record(ctx.job_type, "succeeded", ctx.stopwatch.seconds())
    signals.status_changed.send(job)  # realtime `job.finished`, after the commit


def _settle_failure(
    ctx: JobContext, me: str, exc: Exception, permanent: tuple[type[Exception], ...]
) -> None:
    job = _locked_own_job(ctx, me)
    if job is None:
        db.session.rollback()
        return
    now = datetime.now(UTC)
    job.error = f"{type(exc).__name__}: {exc}"[:2000]
    job.traceback = "".join(traceback.format_exception(exc))[-8000:]
    if isinstance(exc, JobCancelled):
        job.status, job.finished_at, job.error = "cancelled", now, None
    elif isinstance(exc, permanent):
        job.status, job.finished_at = "failed", now
    elif job.attempts >= job.max_attempts:
        job.status, job.finished_at = "dead", now  # the dead-letter list; admins can replay
    else:
        delay = backoff_seconds(job.attempts)
        job.status, job.worker, job.heartbeat_at = "retrying", None, None
        job.run_after, job.published_at = now + timedelta(seconds=delay), None
        send_after_commit(db.session(), job, countdown=delay)
    if job.status in ("failed", "dead"):
        signals.failed_for_good.send(job)
    db.session.commit()
    log.warning("job_failed", job_id=str(ctx.job_id), status=job.status, error=job.error)
    task_metrics.record(ctx.job_type, "failed", ctx.stopwatch.seconds())
    if job.status in ("retrying", "dead"):
        task_metrics.record(ctx.job_type, "retried" if job.status == "retrying" else "dead")
    # Realtime, after the commit: `job.finished` (failed/dead/cancelled) or, when it will
    # be retried, `job.progress` with status `retrying`.
    signals.status_changed.send(job)


def backoff_seconds(attempt: int) -> float:
    """Exponential backoff with full jitter, capped far below the visibility timeout."""
    settings = current_app.config["SETTINGS"]
    ceiling = min(settings.retry_backoff_max, settings.retry_backoff_base * 2 ** (attempt - 1))
    return round(random.uniform(ceiling / 2, ceiling), 3)


def periodic_task(name: str) -> Callable[[Callable[[], Any]], Task]:
    """Register a beat-driven housekeeping task (no job row; safe to run concurrently)."""

    def decorator(body: Callable[[], Any]) -> Task:
        return celery_app.task(name=name, ignore_result=True, acks_late=True)(body)  # type: ignore[no-any-return]

    return decorator
