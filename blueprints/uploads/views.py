"""HTTP for uploads (API.md "uploads"): presign, complete, list, read, delete, download."""

from __future__ import annotations

import uuid
from typing import Any

from apiflask import APIBlueprint
from flask import redirect

from blueprints.common.auth import me
from blueprints.common.teams import current_membership, team_permission
from blueprints.jobs.schemas import job_out
from blueprints.jobs.views import accepted
from blueprints.uploads.schemas import (
    FileAccepted,
    FileEnvelope,
    FileListQuery,
    FileOut,
    FilePage,
    UploadCreated,
    UploadForm,
    UploadIn,
)
from models.file import UserFile
from services.files import uploads

bp = APIBlueprint("uploads", __name__, url_prefix="/api/v1/teams", tag="uploads")


def file_out(row: UserFile) -> FileOut:
    return FileOut(
        id=row.id, team_id=row.team_id, uploaded_by_id=row.uploaded_by_id, filename=row.filename,
        content_type=row.content_type, size=row.size, state=row.state,  # type: ignore[arg-type]
        sha256=row.sha256, rejection_reason=row.rejection_reason,
        has_thumbnail=row.thumbnail_key is not None, created_at=row.created_at,
        ready_at=row.ready_at,
    )  # fmt: skip


@bp.get("/<uuid:team_id>/uploads")
@team_permission("files.read")
@bp.input(FileListQuery, location="query", arg_name="query")
@bp.output(FilePage)
def list_uploads(team_id: uuid.UUID, query: FileListQuery) -> FilePage:
    """The team's files, newest first (filter: state)."""
    page = uploads.list_uploads(team_id, state=query.state, limit=query.limit, cursor=query.cursor)
    return FilePage(items=[file_out(f) for f in page.items], next_cursor=page.next_cursor)


@bp.post("/<uuid:team_id>/uploads")
@team_permission("files.upload")
@bp.input(UploadIn, location="json", arg_name="body")
@bp.output(UploadCreated, status_code=201)
def create_upload(team_id: uuid.UUID, body: UploadIn) -> UploadCreated:
    """Start an upload: a `pending` file and a form to POST its bytes to the store."""
    row, ticket = uploads.create_upload(
        me(), team_id, filename=body.filename, content_type=body.content_type, size=body.size
    )
    form = UploadForm(url=ticket.url, fields=ticket.fields, expires_at=ticket.expires_at)
    return UploadCreated(file=file_out(row), upload=form)


@bp.post("/<uuid:team_id>/uploads/<uuid:file_id>/complete")
@team_permission("files.upload")
@bp.output(FileAccepted, status_code=202)
@bp.doc(responses={409: "The upload is no longer pending"})
def complete_upload(team_id: uuid.UUID, file_id: uuid.UUID) -> Any:
    """The bytes are stored: verify them in the background (`uploads.process`)."""
    row, job = uploads.complete_upload(me(), team_id, file_id)
    return accepted(FileAccepted(job=job_out(job), file=file_out(row)), job.id)


@bp.get("/<uuid:team_id>/uploads/<uuid:file_id>")
@team_permission("files.read")
@bp.output(FileEnvelope)
def get_upload(team_id: uuid.UUID, file_id: uuid.UUID) -> FileEnvelope:
    """One file and its state."""
    return FileEnvelope(file=file_out(uploads.get_upload(team_id, file_id)))


@bp.delete("/<uuid:team_id>/uploads/<uuid:file_id>")
@team_permission("files.upload")
@bp.output(FileAccepted, status_code=202)
def delete_upload(team_id: uuid.UUID, file_id: uuid.UUID) -> Any:
    """Delete a file (yours, or anyone's with `files.delete`); objects go in a job."""
    row, job = uploads.delete_upload(me(), current_membership().role, team_id, file_id)
    return accepted(FileAccepted(job=job_out(job), file=file_out(row)), job.id)


# Members pass the guard with `files.upload`; the service requires `files.delete` for other
# people's files. Declared here so the access-matrix test sees both actions.
delete_upload.team_actions = ("files.upload", "files.delete")  # type: ignore[attr-defined]


@bp.get("/<uuid:team_id>/uploads/<uuid:file_id>/download")
@team_permission("files.read")
@bp.doc(responses={
    302: "Redirect to a presigned link valid DOWNLOAD_URL_SECONDS",
    409: "The file is not ready (pending, processing or rejected)",
})  # fmt: skip
def download_upload(team_id: uuid.UUID, file_id: uuid.UUID) -> Any:
    """Download a ready file: a redirect to a short-lived presigned link (409 if not ready)."""
    response = redirect(uploads.download_url(team_id, file_id), code=302)
    # The link is a bearer credential for its lifetime: keep it out of shared caches.
    response.headers["Cache-Control"] = "no-store"
    return response
