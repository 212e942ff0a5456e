"""Waiting for something to become true, and reading a job as committed right now."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import select

from extensions import db
from models import Job

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T], timeout: float = 20, describe: Callable[[], str] | None = None
) -> T:
    """Poll until `predicate()` is truthy; fail with a description after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s. {describe() if describe else ''}")
        time.sleep(0.05)


def fetch_job(job_id: Any) -> Job:
    """The job row as committed right now (bypassing the session's identity map)."""
    db.session.rollback()
    job = db.session.scalar(
        select(Job).where(Job.id == job_id).execution_options(populate_existing=True)
    )
    assert job is not None, f"job {job_id} not found"
    return job


def wait_job(
    job_id: Any,
    statuses: set[str] | str,
    timeout: float = 30,
    describe: Callable[[], str] | None = None,
) -> Job:
    wanted = {statuses} if isinstance(statuses, str) else statuses

    def done() -> Job | None:
        job = fetch_job(job_id)
        return job if job.status in wanted else None

    def why() -> str:
        job = fetch_job(job_id)
        extra = describe() if describe else ""
        return f"job is {job.status} (attempts {job.attempts}, error {job.error!r}). {extra}"

    found = wait_for(done, timeout, why)
    assert found is not None
    return found
