"""HTTP for the job ledger: users read and cancel their jobs; admins see and replay all."""

from __future__ import annotations

import uuid
from typing import Any

from apiflask import APIBlueprint
from flask import g, url_for

from blueprints.common.auth import admin_required, auth_required, me
from blueprints.common.idempotency import idempotent
from blueprints.common.openapi import operation_doc
from blueprints.jobs.schemas import (
    AdminJobEnvelope,
    AdminJobPage,
    DiscardIn,
    JobEnvelope,
    JobListQuery,
    JobPage,
    PingIn,
    RetryAllIn,
    RetryAllOut,
    admin_job_out,
    job_out,
)
from services.jobs import dead_letters
from services.jobs import queries as job_service

bp = APIBlueprint("jobs", __name__, url_prefix="/api/v1/jobs", tag="jobs")
admin_bp = APIBlueprint("admin_jobs", __name__, url_prefix="/api/v1/admin/jobs", tag="admin")


def accepted(envelope: Any, job_id: uuid.UUID) -> tuple[Any, int, dict[str, str]]:
    """The 202 answer for work started in the background (API.md "Async work")."""
    return envelope, 202, {"Location": url_for("jobs.get_job", job_id=job_id)}


def _signed_in_operator() -> bool:
    """An operator acting through a token they signed in with. Their API keys reach only
    their own things: a leaked key must not open every user's jobs."""
    return me().is_admin and g.get("api_key") is None


@bp.get("")
@auth_required
@bp.input(JobListQuery, location="query", arg_name="query")
@bp.output(JobPage)
def list_jobs(query: JobListQuery) -> JobPage:
    """List my jobs, newest first."""
    page = job_service.list_jobs(
        me(), status=query.status, type_=query.type, limit=query.limit, cursor=query.cursor
    )
    return JobPage(items=[job_out(j) for j in page.items], next_cursor=page.next_cursor)


@bp.get("/<uuid:job_id>")
@auth_required
@bp.output(JobEnvelope)
def get_job(job_id: uuid.UUID) -> JobEnvelope:
    """One of my jobs (operators signed in with a token: anyone's)."""
    job = job_service.read_job_status(me(), job_id, operator=_signed_in_operator())
    return JobEnvelope(job=job_out(job))


@bp.post("/<uuid:job_id>/cancel")
@auth_required
@idempotent()
@bp.output(JobEnvelope)
@bp.doc(responses={409: "The job has already finished, or its type cannot be cancelled"})
def cancel_job(job_id: uuid.UUID) -> JobEnvelope:
    """Cancel a queued job, or ask a running one to stop: exports, on-demand analytics
    runs and probes only (emails, payments and the like always run to their end)."""
    job = job_service.cancel_job(me(), job_id, operator=_signed_in_operator())
    return JobEnvelope(job=job_out(job))


@admin_bp.get("")
@admin_required
@admin_bp.input(JobListQuery, location="query", arg_name="query")
@admin_bp.output(AdminJobPage)
def list_all_jobs(query: JobListQuery) -> AdminJobPage:
    """All jobs (operators); `?status=dead` is the dead-letter list."""
    page = job_service.list_jobs_admin(
        status=query.status, type_=query.type, limit=query.limit, cursor=query.cursor
    )
    return AdminJobPage(items=[admin_job_out(j) for j in page.items], next_cursor=page.next_cursor)


@admin_bp.get("/<uuid:job_id>")
@admin_required
@admin_bp.output(AdminJobEnvelope)
def inspect_job(job_id: uuid.UUID) -> AdminJobEnvelope:
    """Any job with its arguments, attempts, last error and traceback (operators only)."""
    return AdminJobEnvelope(job=admin_job_out(dead_letters.inspect_job(job_id)))


@admin_bp.post("/<uuid:job_id>/retry")
@admin_required
@idempotent()
@admin_bp.output(AdminJobEnvelope, status_code=202)
@admin_bp.doc(responses={409: "Only dead or failed jobs of a known task can be retried"})
def retry_job(job_id: uuid.UUID) -> Any:
    """Replay a dead or failed job with a fresh set of attempts (409 for any other)."""
    job = dead_letters.retry_job(job_id, actor_id=me().id, via="api")
    return accepted(AdminJobEnvelope(job=admin_job_out(job)), job.id)


@admin_bp.post("/retry")
@operation_doc(operation_id="retry_all_jobs")
@admin_required
@admin_bp.input(RetryAllIn, location="json", arg_name="body")
@idempotent()
@admin_bp.output(RetryAllOut)
def retry_all(body: RetryAllIn) -> RetryAllOut:
    """Replay the dead (or failed) jobs of one type, oldest first, up to `limit` a call."""
    outcome = dead_letters.retry_all(
        body.type, status=body.status, limit=body.limit, actor_id=me().id, via="api"
    )
    return RetryAllOut(
        type=body.type,
        status=body.status,
        retried=len(outcome.job_ids),
        job_ids=outcome.job_ids,
        remaining=outcome.remaining,
    )


@admin_bp.post("/<uuid:job_id>/discard")
@admin_required
@admin_bp.input(DiscardIn, location="json", arg_name="body")
@idempotent()
@admin_bp.output(AdminJobEnvelope)
@admin_bp.doc(responses={409: "Only dead jobs can be discarded"})
def discard_job(job_id: uuid.UUID, body: DiscardIn) -> AdminJobEnvelope:
    """Take a dead job off the dead-letter list; it stays in the ledger as `cancelled`."""
    job = dead_letters.discard_job(job_id, actor_id=me().id, via="api", reason=body.reason)
    return AdminJobEnvelope(job=admin_job_out(job))


@admin_bp.post("/ping")
@admin_required
@admin_bp.input(PingIn, location="json", arg_name="body")
@idempotent()
@admin_bp.output(JobEnvelope, status_code=202)
def start_ping(body: PingIn) -> Any:
    """Start the `maintenance.ping` probe job (proves the pipeline end to end)."""
    job = job_service.start_ping(
        me(), sleep_seconds=body.sleep_seconds, fail_attempts=body.fail_attempts
    )
    return accepted(JobEnvelope(job=job_out(job)), job.id)
