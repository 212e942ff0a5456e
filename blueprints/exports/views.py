"""HTTP for exports: request one (a job builds it), list, show and download (API.md "exports")."""

from __future__ import annotations

import uuid
from typing import Any

from apiflask import APIBlueprint
from flask import redirect, url_for
from werkzeug.wrappers import Response

from blueprints.common.auth import me
from blueprints.common.idempotency import idempotent
from blueprints.common.openapi import header_ref, operation_doc
from blueprints.common.schemas import ListQuery
from blueprints.common.teams import current_membership, team_permission
from blueprints.exports.schemas import (
    ExportAccepted,
    ExportEnvelope,
    ExportIn,
    ExportLinks,
    ExportOut,
    ExportPage,
)
from blueprints.jobs.schemas import job_out
from blueprints.jobs.views import accepted
from integrations.storage_backends import get_storage
from models import Export, Job
from services.files import exports

bp = APIBlueprint("exports", __name__, url_prefix="/api/v1/teams", tag="exports")


def export_out(export: Export, job: Job | None) -> ExportOut:
    return ExportOut(
        id=export.id, team_id=export.team_id, resource=export.resource,  # type: ignore[arg-type]
        format=export.format, filters=export.filters,  # type: ignore[arg-type]
        status=exports.export_status(export, job),  # type: ignore[arg-type]
        requested_by_id=export.requested_by_id, row_count=export.row_count, size=export.size,
        sha256=export.sha256, created_at=export.created_at, finished_at=export.finished_at,
        expires_at=export.expires_at,
        links=ExportLinks(
            self=url_for("exports.get_export", team_id=export.team_id, export_id=export.id),
            download=exports.download_path(export.team_id, export.id),
        ),
    )  # fmt: skip


@bp.post("/<uuid:team_id>/exports")
@team_permission("exports.create")
@bp.input(ExportIn, location="json", arg_name="body")
@idempotent()
@bp.output(ExportAccepted, status_code=202)
def create_export(team_id: uuid.UUID, body: ExportIn) -> Any:
    """Export data you may read (payments need payments.read, audit logs audit.read, ...);
    a job writes the file, the job's Location tells when it is done."""
    export, job = exports.create_export(
        me(), current_membership(), resource=body.resource, format_=body.format,
        filters=body.filters.stored(),
    )  # fmt: skip
    return accepted(ExportAccepted(job=job_out(job), export=export_out(export, job)), job.id)


@bp.get("/<uuid:team_id>/exports")
@team_permission("exports.read")
@bp.input(ListQuery, location="query", arg_name="query")
@bp.output(ExportPage)
def list_exports(team_id: uuid.UUID, query: ListQuery) -> ExportPage:
    """The team's exports (of data you may read), newest first."""
    page = exports.list_exports(current_membership(), limit=query.limit, cursor=query.cursor)
    return ExportPage(
        items=[export_out(v.export, v.job) for v in page.items], next_cursor=page.next_cursor
    )


@bp.get("/<uuid:team_id>/exports/<uuid:export_id>")
@team_permission("exports.read")
@bp.output(ExportEnvelope)
def get_export(team_id: uuid.UUID, export_id: uuid.UUID) -> ExportEnvelope:
    """One export with its job's status."""
    view = exports.get_export(current_membership(), export_id)
    return ExportEnvelope(
        export=export_out(view.export, view.job),
        job=job_out(view.job) if view.job is not None else None,
    )


@bp.get("/<uuid:team_id>/exports/<uuid:export_id>/download")
@team_permission("exports.read")
@bp.doc(responses={
    302: "Redirect to a short-lived signed URL of the file",
    409: "Not ready yet (Retry-After) or failed (the job's error)",
    410: "Expired: request a new export",
})  # fmt: skip
@operation_doc(
    responses={409: {"headers": {"Retry-After": header_ref("Retry-After-If-Retryable")}}}
)
def download_export(team_id: uuid.UUID, export_id: uuid.UUID) -> Response:
    """Download a ready export: a redirect to a signed URL valid DOWNLOAD_URL_SECONDS."""
    url = exports.download_url(current_membership(), export_id, get_storage())
    response = redirect(url, 302)
    response.headers["Cache-Control"] = "no-store"  # signed URLs must not be cached
    return response
