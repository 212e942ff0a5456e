"""Exports as the API sees them: requesting one, listing and reading them, the download.

An export is a team's data written to one file in object storage by the `exports.build`
job (services/files/export_job.py; its rows come from export_sources.py and are encoded
by export_formats.py). Here: the request (one transaction: the row, its job, the audit),
the derived status, and the short-lived download link.

Who may export what: `exports.create` plus the resource's own read permission, checked
when the export is requested, again when the job builds it (the requester's role may have
changed) and again at download time.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from flask import current_app
from sqlalchemy import Select, Table, insert, select

from extensions import db
from integrations.storage import ObjectStorage
from models import Export, Job, User
from services.core import permissions
from services.core.audit import record_audit
from services.core.errors import Conflict, Forbidden, NotFound, ServiceError, ValidationFailed
from services.core.pagination import Page, paginate
from services.core.permissions import Membership
from services.jobs import names
from services.jobs.outbox import enqueue

# The read permission each resource needs on top of `exports.create`/`exports.read`.
RESOURCE_PERMISSION: dict[str, str] = {
    "payments": "payments.read",
    "inventory": "team.read",
    "audit_logs": "audit.read",
    "analytics": "team.read",
    "members": "members.read",
}
RETRY_AFTER_SECONDS = 5


class Gone(ServiceError):
    status, title, type_slug = 410, "Gone", "gone"


@dataclass(frozen=True)
class ExportView:
    """An export with its job, as the API shows it."""

    export: Export
    job: Job | None

    @property
    def status(self) -> str:
        """queued | running | ready | failed | expired (derived, never stored)."""
        return export_status(self.export, self.job)


def export_status(export: Export, job: Job | None, now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    if export.storage_key is not None:
        return "expired" if export.expires_at is not None and export.expires_at <= now else "ready"
    if export.finished_at is not None:
        return "expired"  # it was ready once; cleanup removed the object
    if job is None or job.status in ("failed", "dead", "cancelled"):
        return "failed"
    if job.status == "succeeded":
        return "expired"
    return "running" if job.status == "running" else "queued"


def download_path(team_id: uuid.UUID, export_id: uuid.UUID) -> str:
    return f"/api/v1/teams/{team_id}/exports/{export_id}/download"


def require_resource(role: str, resource: str) -> None:
    if not permissions.allows(role, RESOURCE_PERMISSION[resource]):
        raise Forbidden(f"Your role ({role}) may not read {resource}, so it cannot export it.")


# --- requests ------------------------------------------------------------------------------


_EXPORTS = cast(Table, Export.__table__)
_INSERT_EXPORT = insert(_EXPORTS).returning(_EXPORTS.c.created_at, _EXPORTS.c.updated_at)


def create_export(
    user: User,
    membership: Membership,
    *,
    resource: str,
    format_: str,
    filters: dict[str, Any],
) -> tuple[Export, Job]:
    """Record an export and queue the job that builds it. One transaction."""
    require_resource(membership.role, resource)
    if filters.get("status") and resource != "payments":
        raise ValidationFailed(
            "Only payments can be filtered by status.",
            errors={"filters.status": ["Only for resource payments."]},
        )
    export_id = uuid.uuid4()
    job = enqueue(
        names.EXPORTS_BUILD, args={"export_id": str(export_id)}, user_id=user.id,
        team_id=membership.team_id,
    )  # fmt: skip
    # The job row first (enqueue writes it at once; exports.job_id references it), then the
    # export already pointing at it: two INSERTs, where an export written first needs a
    # third statement to link it. Written by one statement, like the job, not by the unit
    # of work; the Export returned holds its values and is not in the session.
    row: dict[str, Any] = {
        "id": export_id, "team_id": membership.team_id, "requested_by_id": user.id,
        "resource": resource, "format": format_, "filters": filters, "job_id": job.id,
    }  # fmt: skip
    stamped = db.write(_INSERT_EXPORT, row).one()
    export = Export(**row, storage_key=None, row_count=None, size=None, sha256=None,
                    finished_at=None, expires_at=None, created_at=stamped.created_at,
                    updated_at=stamped.updated_at)  # fmt: skip
    record_audit("export.requested", actor_id=user.id, team_id=membership.team_id,
                 subject_type="export", subject_id=export.id,
                 data={"resource": resource, "format": format_, "filters": filters})  # fmt: skip
    db.session.commit()
    return export, job


def list_exports(membership: Membership, *, limit: int, cursor: str | None) -> Page[ExportView]:
    """The team's exports of resources the caller may read, newest first."""
    readable = [r for r, action in RESOURCE_PERMISSION.items()
                if permissions.allows(membership.role, action)]  # fmt: skip
    query: Select[Export] = select(Export).where(
        Export.team_id == membership.team_id, Export.resource.in_(readable)
    )
    page = paginate(query, Export, limit, cursor)
    job_ids = [e.job_id for e in page.items if e.job_id is not None]
    jobs = {j.id: j for j in db.session.scalars(select(Job).where(Job.id.in_(job_ids)))}
    views = [ExportView(e, jobs.get(e.job_id) if e.job_id else None) for e in page.items]
    return Page(views, page.next_cursor)


def get_export(membership: Membership, export_id: uuid.UUID) -> ExportView:
    """One export of the team (404 otherwise; 403 if its resource is not readable)."""
    export = db.session.get(Export, export_id)
    if export is None or export.team_id != membership.team_id:
        raise NotFound("No such export.")
    require_resource(membership.role, export.resource)
    job = db.session.get(Job, export.job_id) if export.job_id else None
    return ExportView(export, job)


def download_url(membership: Membership, export_id: uuid.UUID, storage: ObjectStorage) -> str:
    """A short-lived signed URL of a ready export; 409 while not ready, 410 once expired.

    The caller's permission is checked now, not when the export was made: a member who
    lost access cannot use an old export to read what they no longer may.
    """
    view = get_export(membership, export_id)
    status, export = view.status, view.export
    if status in ("queued", "running"):
        raise Conflict(
            "The export is not ready yet; try again shortly.",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)}, extra={"export_status": status},
        )  # fmt: skip
    if status == "failed":
        error = view.job.error if view.job is not None else None
        raise Conflict(f"The export failed: {error or 'unknown error'}",
                       extra={"export_status": status})  # fmt: skip
    if status == "expired" or export.storage_key is None:
        raise Gone("The export has expired; request a new one.")
    stamp = export.created_at.strftime("%Y%m%d-%H%M%S")
    return storage.presigned_get(
        export.storage_key,
        expires_in=current_app.config["SETTINGS"].download_url_seconds,
        filename=f"{export.resource}-{stamp}.{export.format}",
    )
