"""Export jobs (queue `exports`): build a file in object storage; the daily clean-up."""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

from extensions import db
from integrations.storage_backends import get_storage
from models import Job
from services.files import export_job
from services.jobs import names
from services.jobs.context import JobContext
from services.jobs.errors import PermanentError
from services.jobs.runner import job_task, periodic_task


@job_task(names.EXPORTS_BUILD)
def build(ctx: JobContext) -> dict[str, Any] | None:
    """Stream an export (args: export_id) into storage; its row is marked ready only when
    the whole object is stored, in the job's final commit."""
    export_id = uuid.UUID(ctx.args["export_id"])
    storage = get_storage()
    try:
        report = export_job.build(export_id, storage, ctx.progress)
    except Exception as exc:
        permanent = isinstance(exc, export_job.ExportRefused)
        db.session.rollback()
        # Whatever an attempt managed to store is not an export: remove it now.
        # Best effort: a leftover object is never served (no row points at it).
        with contextlib.suppress(Exception):
            export_job.discard_partial(export_id, storage)
        job = db.session.get(Job, ctx.job_id)
        if permanent or (job is not None and ctx.attempt >= job.max_attempts):
            export_job.record_failure(export_id, f"{type(exc).__name__}: {exc}")
        if permanent:
            raise PermanentError(str(exc)) from exc
        raise
    return report.as_result() if report is not None else None


@periodic_task(names.EXPORTS_CLEANUP)
def cleanup() -> int:
    """Beat, daily: delete expired exports' objects (the rows stay, for history)."""
    return export_job.cleanup_expired(get_storage())
