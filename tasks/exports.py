"""Export jobs (queue `exports`): build a file in object storage; the daily clean-up."""

from __future__ import annotations

import uuid
from typing import Any

from integrations.storage_backends import get_storage
from services.files import export_job
from services.jobs import names
from services.jobs.context import JobContext
from services.jobs.runner import job_task, periodic_task


@job_task(names.EXPORTS_BUILD)
def build(ctx: JobContext) -> dict[str, Any] | None:
    """Stream an export (args: export_id) into storage; its row is marked ready only when
    the whole object is stored, in the job's final commit."""
    report = export_job.build_or_clean_up(
        uuid.UUID(ctx.args["export_id"]), get_storage(), ctx.progress,
        job_id=ctx.job_id, attempt=ctx.attempt,
    )  # fmt: skip
    return report.as_result() if report is not None else None


@periodic_task(names.EXPORTS_CLEANUP)
def cleanup() -> int:
    """Beat, daily: delete expired exports' objects (the rows stay, for history)."""
    return export_job.cleanup_expired(get_storage())
