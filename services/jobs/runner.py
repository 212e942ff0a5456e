"""The one way to declare a job-backed task: `@job_task("domain.verb")`.

Every task goes through `run_job`, which makes it safe to deliver twice:
1. claim the job row (jobs.claims: queued/retrying, or running on a worker that is
   provably dead); a finished job or one alive elsewhere is skipped, so redelivery is
   harmless;
2. heartbeat while running, so the reaper can tell a dead worker from a slow one;
3. run the work in a session and commit its effects TOGETHER with `succeeded`, so a
   crash before the commit leaves neither (the redelivery redoes both, once);
4. on error: retry with exponential backoff and jitter (the delay is bounded far below
   the broker's visibility timeout), then `dead`; `PermanentError` fails at once.

A short job whose work is idempotent by a unique key may claim in the work's own
transaction instead (`claim_with_work=True`): one commit per job, not two. Each commit
waits for the database's WAL flush, which took ~1.2 ms here, longer than such a job's
own statements.
"""

from __future__ import annotations

import random
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, cast

from celery import Task
from flask import current_app
from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.exc import DBAPIError, OperationalError

from extensions import celery_app, db
from logs import bind_request_id, get_logger
from models import Job
from services.core import redis_batch
from services.core.commit_hooks import after_commit
from services.jobs import metrics as task_metrics
from services.jobs import signals
from services.jobs.claims import claim, claim_with_work, worker_id
from services.jobs.context import JobContext, TaskBody
from services.jobs.errors import DatabaseUnavailable, JobCancelled, PermanentError
from services.jobs.heartbeat import Heartbeat
from services.jobs.outbox import send_after_commit
from services.jobs.schedule import skip_if_expired

log = get_logger(__name__)


def job_task(
    name: str, *, permanent: tuple[type[Exception], ...] = (), claim_with_work: bool = False
) -> Callable[[TaskBody], Task]:
    """Register `body` as the Celery task `name`, run through `run_job`.

    `permanent`: exceptions that fail the job at once, like `PermanentError`. It is how a
    task maps a lower layer's "retrying cannot help" (a gateway refusing the request as
    invalid) without that layer knowing about jobs.

    `claim_with_work`: for short jobs whose work is idempotent by a unique key (writing it
    twice writes it once): the claim commits with the work's first commit, not before it
    (see `run_job`). Only on a message's first delivery: a redelivered one (its worker
    died, or it sat unacknowledged) claims first, so a job that kills its worker still
    uses up its attempts. Until its first commit such a body must leave its job row to
    the runner: `ctx.progress` does nothing then and `record_external_effect` refuses.
    """
    permanent_errors: tuple[type[Exception], ...] = (PermanentError, *permanent)

    def decorator(body: TaskBody) -> Task:
        # A run beat scheduled (jobs.schedule) does nothing once past its expiry.
        guarded = skip_if_expired(body)

        def run(self: Task, job_id: str) -> None:
            request = self.request
            request_id = (request.headers or {}).get("request_id")
            redelivered = bool((request.delivery_info or {}).get("redelivered"))
            try:
                run_job(guarded, job_id, request_id=request_id, permanent=permanent_errors,
                        claim_with_work=claim_with_work and not redelivered)  # fmt: skip
            except DatabaseUnavailable as exc:
                # The job row could not even be read: acking this delivery (what Celery
                # does with a task that raised) would leave the job `queued` with no
                # message anywhere. Send it again shortly instead; the claim decides then.
                raise self.retry(countdown=backoff_seconds(request.retries + 1),
                                 max_retries=None, exc=exc) from exc  # fmt: skip

        run.__doc__ = body.__doc__
        # max_retries=None: Celery's own retry is used only for a claim that could not
        # reach the database (above), and that must go on until the database is back.
        # `runs_as_job`: beat sends it through its shared schedule, as a job per period
        # (tasks/runtime/beat_scheduler.py).
        task = celery_app.task(name=name, bind=True, acks_late=True, ignore_result=True,
                               max_retries=None, runs_as_job=True)  # fmt: skip
        return task(run)  # type: ignore[no-any-return]

    return decorator


def run_job(
    body: TaskBody,
    job_id: str,
    *,
    request_id: str | None = None,
    permanent: tuple[type[Exception], ...] = (PermanentError,),
    claim_with_work: bool = False,
) -> None:
    """Claim, run and settle one job; safe to call any number of times for the same id.

    `claim_with_work`: claim in the work's transaction (see `job_task`), when the job is
    one the usual claim would take; anything else (finished, running elsewhere, out of
    attempts) is decided by the usual claim."""
    me, job_uuid = worker_id(), uuid.UUID(job_id)
    if claim_with_work and _run_claimed_with_work(body, job_uuid, me, request_id, permanent):
        return
    # The claim's Redis writes after its commit (dashboard bump, realtime `running`, the
    # `started` metric) go out in one round trip, and so do the settle's below.
    with redis_batch.batch():
        with _reaching_the_database():
            ctx = claim(job_uuid, me)
        if ctx is None:
            return
        _started(ctx, request_id)
        task_metrics.record(ctx.job_type, "started")
    beat = _heartbeat(ctx)
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


def _run_claimed_with_work(
    body: TaskBody, job_id: uuid.UUID, me: str, request_id: str | None,
    permanent: tuple[type[Exception], ...],
) -> bool:  # fmt: skip
    """Run a job whose claim commits with the work's first commit; False (nothing done)
    if the usual claim must decide what to do with it.

    A single-transaction job costs one commit: BEGIN, the claim, the work, `succeeded`,
    COMMIT, and one Redis round trip for everything announced after it. Until that
    commit the job reads as queued, its row locked: a duplicate delivery waits and then
    finds it finished; a worker killed meanwhile leaves no trace, and the redelivered
    message claims it the usual way. A body that commits on its way (a fan-out's chunks)
    commits the claim with its first chunk and then runs as any job does.

    The price: with no committed claim there is no heartbeat for the reaper to find stale.
    A pool process killed mid-job is redelivered at once by its worker (as any job), but
    a whole worker host lost mid-job leaves a job that reads queued and a message in the
    broker's unacked set: recovered as any message lost before its claim, by the relay
    once the job's queue is empty (jobs.relay.requeue_unclaimed) or by the broker's
    visibility timeout, not within the reaper's stale threshold."""
    with _reaching_the_database():
        claimed = claim_with_work(job_id, me)
    if claimed is None:
        return False
    ctx, job = claimed
    ctx.claim_pending = True
    beat = _heartbeat(ctx)
    # What the usual claim does once committed; the announcements then go out on the
    # Redis batch of the commit that carried the claim (the settle's, for most jobs).
    after_commit(partial(_claim_committed, ctx, job, beat))
    _started(ctx, request_id)
    try:
        try:
            result = body(ctx)
        except Exception as exc:  # noqa: BLE001 - as in run_job
            db.session.rollback()
            with redis_batch.batch():
                if ctx.claim_pending:
                    _claim_and_fail(ctx, me, exc, permanent)
                else:
                    _settle_failure(ctx, me, exc, permanent)
            return True
        try:
            with redis_batch.batch():
                _settle_success(ctx, me, result)
        except Exception as exc:
            if not ctx.claim_pending:
                raise  # as in run_job: the row is running here; the reaper takes it over
            # Nothing of the job committed, its claim neither (the job reads queued, and
            # its message is acked after this): record it as a failed attempt.
            db.session.rollback()
            with redis_batch.batch():
                _claim_and_fail(ctx, me, exc, permanent)
        return True
    finally:
        beat.stop()


def _claim_committed(ctx: JobContext, job: Job, beat: Heartbeat) -> None:
    """After the commit that carried a claim made with the work: the job is visibly
    running now (or finished, when that commit also settled it)."""
    ctx.claim_pending = False
    beat.start()  # stopped by the runner when the job ends
    task_metrics.record(ctx.job_type, "started")
    signals.status_changed.send(job)  # realtime `job.progress` (running)


def _claim_and_fail(
    ctx: JobContext, me: str, exc: Exception, permanent: tuple[type[Exception], ...]
) -> None:
    """A job failed before its claim committed: nothing of it stands. Claim it the usual
    way, so that the attempt counts, and settle the failure as any attempt's."""
    with _reaching_the_database():
        claimed = claim(ctx.job_id, me)
    if claimed is None:
        return  # another delivery took the job meanwhile: its run counts
    claimed.stopwatch = ctx.stopwatch
    task_metrics.record(ctx.job_type, "started")
    _settle_failure(claimed, me, exc, permanent)


@contextmanager
def _reaching_the_database() -> Iterator[None]:
    """A claim that cannot reach the database raises DatabaseUnavailable (job_task then
    sends the message again shortly instead of acking it)."""
    try:
        yield
    except DBAPIError as exc:
        db.session.rollback()
        if exc.connection_invalidated or isinstance(exc, OperationalError):
            raise DatabaseUnavailable(str(exc.orig)) from exc
        raise


def _started(ctx: JobContext, request_id: str | None) -> None:
    """Logs from here on carry the request that asked for the job."""
    bind_request_id(request_id or ctx.request_id)
    log.info("job_started", job_id=str(ctx.job_id), attempt=ctx.attempt)


def _heartbeat(ctx: JobContext) -> Heartbeat:
    return Heartbeat(ctx.job_id, ctx.worker, current_app.config["SETTINGS"].job_heartbeat_seconds)


_JOBS = cast(Table, Job.__table__)
# Success, only while this worker still owns the job (the reaper may have taken it over).
# Core, built once: the runner already holds everything the signals need of the row.
_SUCCEED = (
    update(_JOBS)
    .where(_JOBS.c.id == bindparam("job_id"), _JOBS.c.status == "running",
           _JOBS.c.worker == bindparam("me"))
    .values(status="succeeded", progress=100,
            result=bindparam("result", type_=_JOBS.c.result.type),
            finished_at=bindparam("now"), error=None, traceback=None)
)  # fmt: skip


def _locked_own_job(ctx: JobContext, me: str) -> Job | None:
    """The job row, locked, if this worker still owns it (the reaper may have taken it)."""
    job = db.session.scalar(select(Job).where(Job.id == ctx.job_id).with_for_update())
    if job is None or job.status != "running" or job.worker != me:
        log.warning("job_lost_ownership", job_id=str(ctx.job_id))
        return None
    return job


def _settle_success(ctx: JobContext, me: str, result: dict[str, Any] | None) -> None:
    params = {"job_id": ctx.job_id, "me": me, "result": result, "now": datetime.now(UTC)}
    if db.write(_SUCCEED, params).rowcount != 1:
        log.warning("job_lost_ownership", job_id=str(ctx.job_id))
        db.session.rollback()  # someone else owns it now: drop our effects, theirs count
        return
    job = Job(id=ctx.job_id, type=ctx.job_type, status="succeeded", user_id=ctx.user_id,
              team_id=ctx.team_id, progress=100, attempts=ctx.attempt, result=result,
              error=None)  # fmt: skip
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
    delay = round(random.uniform(ceiling / 2, ceiling), 3)
    # RabbitMQ's native delayed delivery (quorum queues) counts whole seconds and refuses
    # a countdown under one (kombu raises ValueError): there the shortest wait is 1 s.
    return max(delay, 1.0) if settings.broker_is_rabbitmq else delay


def periodic_task(name: str, *, task_events: bool = True) -> Callable[[Callable[[], Any]], Task]:
    """Register a beat-driven housekeeping task (no job row; safe to run concurrently).

    For the ticks every few seconds only, whose duplicates are harmless by design: beat's
    leader sends them from memory, with no record in the shared schedule (a write per tick
    for nothing). A periodic entry whose period matters (hourly, daily) is a `job_task`:
    beat sends each of its periods once, as a job (services/jobs/schedule.py).

    `task_events=False`: workers send no task events for it (Celery's `Task.send_events`),
    and beat no `task-sent` (tasks/runtime/beat_scheduler.py), so Flower, which builds its
    task history from those events, never lists it. For the ticks every few seconds (the
    relay, the reaper, the audit sealer) that would otherwise bury the business tasks
    operators look for there; their runs are still in the worker's log.
    """

    def decorator(body: Callable[[], Any]) -> Task:
        task = celery_app.task(
            name=name, ignore_result=True, acks_late=True, send_events=task_events
        )(body)
        return task  # type: ignore[no-any-return]

    return decorator
