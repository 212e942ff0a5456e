"""File jobs: exports (queue `exports`: build a file in object storage, the daily
clean-up) and uploads (queue `uploads`: verify a stored file, remove objects, expire stale
uploads)."""

from __future__ import annotations

import uuid
from typing import Any

from integrations.storage_backends import get_storage
from services.files import export_job, upload_verification, uploads
from services.jobs import names
from services.jobs.context import JobContext
from services.jobs.runner import job_task


@job_task(names.EXPORTS_BUILD)
def build_export(ctx: JobContext) -> dict[str, Any] | None:
    """Stream an export (args: export_id) into storage; its row is marked ready only when
    the whole object is stored, in the job's final commit."""
    report = export_job.build_or_clean_up(
        uuid.UUID(ctx.args["export_id"]), get_storage(), ctx.progress,
        job_id=ctx.job_id, attempt=ctx.attempt,
    )  # fmt: skip
    return report.as_result() if report is not None else None


@job_task(names.EXPORTS_CLEANUP)
def cleanup_exports(ctx: JobContext) -> dict[str, Any]:
    """Beat, daily: delete expired exports' objects (the rows stay, for history)."""
    return {"expired": export_job.cleanup_expired(get_storage())}


@job_task(names.UPLOADS_PROCESS)
def process_upload(ctx: JobContext) -> dict[str, Any]:
    """Verify an uploaded file (args: file_id): size, hash, real type, thumbnail, text."""
    return upload_verification.process_upload(uuid.UUID(ctx.args["file_id"]), get_storage())


@job_task(names.UPLOADS_DELETE_OBJECT)
def delete_upload_objects(ctx: JobContext) -> dict[str, Any]:
    """Remove a deleted file's objects (args: keys); idempotent."""
    return uploads.delete_objects([str(k) for k in ctx.args["keys"]], get_storage())


@job_task(names.UPLOADS_CLEANUP_PENDING)
def cleanup_pending_uploads(ctx: JobContext) -> dict[str, Any]:
    """Beat, hourly: delete uploads never completed within PENDING_UPLOAD_HOURS."""
    return {"deleted": uploads.cleanup_pending()}
