"""Job representations (API.md "Async work: jobs")."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from flask import url_for
from pydantic import BaseModel, Field

from blueprints.common.schemas import ListQuery, Strict
from models import Job
from services.jobs import dead_letters
from services.jobs.queries import JobView

JobStatus = Literal["queued", "running", "succeeded", "failed", "retrying", "dead", "cancelled"]


class JobLinks(BaseModel):
    self: str
    result: str | None = None


class JobOut(BaseModel):
    id: uuid.UUID
    type: str
    status: JobStatus
    progress: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    attempts: int
    error: str | None = None
    result: dict[str, Any] | None = None
    links: JobLinks


class AdminJobOut(JobOut):
    """What operators see in addition: arguments, limits, traceback and ownership."""

    args: dict[str, Any]
    max_attempts: int
    queue: str
    user_id: uuid.UUID | None
    team_id: uuid.UUID | None
    traceback: str | None
    published_at: datetime | None
    run_after: datetime
    worker: str | None
    heartbeat_at: datetime | None
    updated_at: datetime
    request_id: str | None = Field(description="Find the request and worker logs by it.")


class JobEnvelope(BaseModel):
    job: JobOut


class AdminJobEnvelope(BaseModel):
    job: AdminJobOut


class JobPage(BaseModel):
    items: list[JobOut]
    next_cursor: str | None


class AdminJobPage(BaseModel):
    items: list[AdminJobOut]
    next_cursor: str | None


class JobListQuery(ListQuery):
    status: JobStatus | None = None
    type: str | None = Field(None, max_length=100)


class RetryAllIn(Strict):
    type: str = Field(min_length=1, max_length=100, description="The task name, e.g. email.send.")
    status: Literal["dead", "failed"] = "dead"
    limit: int = Field(
        dead_letters.RETRY_ALL_MAX,
        ge=1,
        le=dead_letters.RETRY_ALL_MAX,
        description="At most this many, oldest first; repeat while `remaining` > 0.",
    )


class RetryAllOut(BaseModel):
    type: str
    status: str
    retried: int
    job_ids: list[uuid.UUID]
    remaining: int


class DiscardIn(Strict):
    reason: str | None = Field(None, max_length=500, description="Kept in the audit log.")


class PingIn(Strict):
    sleep_seconds: float = Field(0, ge=0, le=60)
    fail_attempts: int = Field(0, ge=0, le=10)


def job_out(job: Job | JobView) -> JobOut:
    return JobOut(**_job_fields(job))


def admin_job_out(job: Job) -> AdminJobOut:
    return AdminJobOut(
        **_job_fields(job),
        args=job.args,
        max_attempts=job.max_attempts,
        queue=job.queue,
        user_id=job.user_id,
        team_id=job.team_id,
        traceback=job.traceback,
        published_at=job.published_at,
        run_after=job.run_after,
        worker=job.worker,
        heartbeat_at=job.heartbeat_at,
        updated_at=job.updated_at,
        request_id=job.request_id,
    )


def _job_fields(job: Job | JobView) -> dict[str, Any]:
    self_url = url_for("jobs.get_job", job_id=job.id)
    result_url = (job.result or {}).get("url") if job.status == "succeeded" else None
    return {
        "id": job.id,
        "type": job.type,
        "status": job.status,
        "progress": job.progress,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "attempts": job.attempts,
        "error": job.error,
        "result": job.result,
        "links": JobLinks(self=self_url, result=result_url),
    }
