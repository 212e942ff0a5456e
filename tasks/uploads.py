"""Upload jobs (queue `uploads`): verify a stored file, remove objects, expire stale uploads."""

from __future__ import annotations

import uuid
from typing import Any

from integrations.storage_backends import get_storage
from services.files import uploads
from services.jobs.runner import JobContext, job_task, periodic_task


@job_task("uploads.process")
def process(ctx: JobContext) -> dict[str, Any]:
    """Verify an uploaded file (args: file_id): size, hash, real type, thumbnail, text."""
    return uploads.process_upload(uuid.UUID(ctx.args["file_id"]), get_storage())


@job_task("uploads.delete_object")
def delete_object(ctx: JobContext) -> dict[str, Any]:
    """Remove a deleted file's objects (args: keys); idempotent."""
    return uploads.delete_objects([str(k) for k in ctx.args["keys"]], get_storage())


@periodic_task("uploads.cleanup_pending")
def cleanup_pending() -> int:
    """Beat, hourly: delete uploads never completed within PENDING_UPLOAD_HOURS."""
    return uploads.cleanup_pending()
