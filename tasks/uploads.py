"""Upload jobs (queue `uploads`): verify a stored file, remove objects, expire stale uploads."""

from __future__ import annotations

import uuid
from typing import Any

from integrations.storage_backends import get_storage
from services.files import upload_verification, uploads
from services.jobs import names
from services.jobs.context import JobContext
from services.jobs.runner import job_task, periodic_task


@job_task(names.UPLOADS_PROCESS)
def process(ctx: JobContext) -> dict[str, Any]:
    """Verify an uploaded file (args: file_id): size, hash, real type, thumbnail, text."""
    return upload_verification.process_upload(uuid.UUID(ctx.args["file_id"]), get_storage())


@job_task(names.UPLOADS_DELETE_OBJECT)
def delete_object(ctx: JobContext) -> dict[str, Any]:
    """Remove a deleted file's objects (args: keys); idempotent."""
    return uploads.delete_objects([str(k) for k in ctx.args["keys"]], get_storage())


@periodic_task(names.UPLOADS_CLEANUP_PENDING)
def cleanup_pending() -> int:
    """Beat, hourly: delete uploads never completed within PENDING_UPLOAD_HOURS."""
    return uploads.cleanup_pending()
