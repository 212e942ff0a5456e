"""Exports: a team's data written to one file in object storage by the `exports.build` job.

Memory stays constant whatever the size: rows come from a server-side cursor
(`yield_per`), are encoded into ~1 MiB chunks and streamed straight into
`ObjectStorage.write`, which computes size and SHA-256 on the way (xlsx goes through a
temporary file written by xlsxwriter in constant-memory mode, then streamed the same way).
The export row gets its `storage_key` only in the job's final transaction, after the whole
object is stored, so a failed or half-written export is never offered for download.

Who may export what: `exports.create` plus the resource's own read permission, checked
when the export is requested, again when the job builds it (the requester's role may have
changed) and again at download time.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import xlsxwriter
from flask import current_app
from sqlalchemy import Select, func, select

from extensions import db
from integrations.storage import ObjectStorage
from models import AnalyticsEvent, AuditLog, Export, InventoryItem, Job, Payment, TeamMember, User
from services import permissions
from services.audit import record_audit
from services.errors import Conflict, Forbidden, NotFound, ServiceError, ValidationFailed
from services.notifications import notify
from services.pagination import Page, paginate
from tasks.dispatch import enqueue

# The read permission each resource needs on top of `exports.create`/`exports.read`.
RESOURCE_PERMISSION: dict[str, str] = {
    "payments": "payments.read",
    "inventory": "team.read",
    "audit_logs": "audit.read",
    "analytics": "team.read",
    "members": "members.read",
}
CONTENT_TYPES = {
    "csv": "text/csv; charset=utf-8",
    "jsonl": "application/x-ndjson",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}
CHUNK_BYTES = 1024 * 1024  # what one storage.write chunk holds (multipart parts are >= 5 MiB)
FETCH_ROWS = 2000  # rows per round trip of the server-side cursor
PROGRESS_EVERY = 5000  # rows between progress reports (each is one small UPDATE)
XLSX_MAX_ROWS = 1_048_576  # Excel's sheet limit, header included
RETRY_AFTER_SECONDS = 5
# Job states in which the export may still become ready.
PENDING_JOB_STATES = frozenset({"queued", "running", "retrying"})
# Cells starting with these are formulas to spreadsheet programs (CSV/formula injection).
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


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


def storage_key(export: Export) -> str:
    return f"teams/{export.team_id}/exports/{export.id}.{export.format}"


def _require_resource(role: str, resource: str) -> None:
    if not permissions.allows(role, RESOURCE_PERMISSION[resource]):
        raise Forbidden(f"Your role ({role}) may not read {resource}, so it cannot export it.")


# --- requests ------------------------------------------------------------------------------


def create_export(
    user: User,
    membership: TeamMember,
    *,
    resource: str,
    format_: str,
    filters: dict[str, Any],
) -> tuple[Export, Job]:
    """Record an export and queue the job that builds it. One transaction."""
    _require_resource(membership.role, resource)
    if filters.get("status") and resource != "payments":
        raise ValidationFailed(
            "Only payments can be filtered by status.",
            errors={"filters.status": ["Only for resource payments."]},
        )
    export = Export(
        id=uuid.uuid4(), team_id=membership.team_id, requested_by_id=user.id, resource=resource,
        format=format_, filters=filters,
    )  # fmt: skip
    db.session.add(export)
    db.session.flush()
    job = enqueue(
        "exports.build", args={"export_id": str(export.id)}, user_id=user.id,
        team_id=membership.team_id,
    )  # fmt: skip
    db.session.flush()  # the job row first: exports.job_id references it
    export.job_id = job.id
    record_audit("export.requested", actor_id=user.id, team_id=membership.team_id,
                 subject_type="export", subject_id=export.id,
                 data={"resource": resource, "format": format_, "filters": filters})  # fmt: skip
    db.session.commit()
    return export, job


def list_exports(membership: TeamMember, *, limit: int, cursor: str | None) -> Page[ExportView]:
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


def get_export(membership: TeamMember, export_id: uuid.UUID) -> ExportView:
    """One export of the team (404 otherwise; 403 if its resource is not readable)."""
    export = db.session.get(Export, export_id)
    if export is None or export.team_id != membership.team_id:
        raise NotFound("No such export.")
    _require_resource(membership.role, export.resource)
    job = db.session.get(Job, export.job_id) if export.job_id else None
    return ExportView(export, job)


def download_url(membership: TeamMember, export_id: uuid.UUID, storage: ObjectStorage) -> str:
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


# --- the job -------------------------------------------------------------------------------


@dataclass
class BuildReport:
    """What the job body returns (stored as the job's result)."""

    export_id: uuid.UUID
    row_count: int
    size: int
    sha256: str
    url: str

    def as_result(self) -> dict[str, Any]:
        return {"export_id": str(self.export_id), "row_count": self.row_count,
                "size": self.size, "sha256": self.sha256, "url": self.url}  # fmt: skip


class ExportRefused(Exception):
    """The export can never be built (the requester lost access, too many rows)."""


def build(
    export_id: uuid.UUID, storage: ObjectStorage, progress: Callable[[int], None]
) -> BuildReport | None:
    """The `exports.build` job body: stream the rows into one object, then record it.

    Idempotent: an export already stored is reported again, nothing is rewritten. The
    caller commits (with the job's `succeeded`); None if the export row is gone.
    """
    export = db.session.get(Export, export_id)
    if export is None:
        return None
    if export.storage_key is not None and export.sha256 is not None and export.size is not None:
        return BuildReport(export.id, export.row_count or 0, export.size, export.sha256,
                           download_path(export.team_id, export.id))  # fmt: skip
    role = db.session.scalar(
        select(TeamMember.role).where(
            TeamMember.team_id == export.team_id, TeamMember.user_id == export.requested_by_id
        )
    )
    if role is None or not (
        permissions.allows(role, "exports.create")
        and permissions.allows(role, RESOURCE_PERMISSION[export.resource])
    ):
        raise ExportRefused("The requester may no longer read this data.")
    header, query = _query(export)
    total = int(db.session.scalar(select(func.count()).select_from(query.subquery())) or 0)
    if export.format == "xlsx" and total + 1 > XLSX_MAX_ROWS:
        raise ExportRefused(f"{total} rows do not fit in one xlsx sheet; use csv or jsonl.")
    counter = _Counter(total, progress)
    # A server-side cursor: PostgreSQL sends FETCH_ROWS at a time, never the whole result.
    rows = counter.wrap(db.session.execute(query.execution_options(yield_per=FETCH_ROWS)))
    key = storage_key(export)
    stored = storage.write(key, _encode(export.format, header, rows),
                           content_type=CONTENT_TYPES[export.format])  # fmt: skip
    now = datetime.now(UTC)
    settings = current_app.config["SETTINGS"]
    export.storage_key, export.row_count, export.size = stored.key, counter.rows, stored.size
    export.sha256, export.finished_at = stored.sha256, now
    export.expires_at = now + timedelta(days=settings.export_retention_days)
    path = download_path(export.team_id, export.id)
    record_audit(
        "export.ready", actor_id=export.requested_by_id, team_id=export.team_id,
        subject_type="export", subject_id=export.id,
        data={"rows": counter.rows, "size": stored.size, "sha256": stored.sha256},
    )  # fmt: skip
    if export.requested_by_id is not None:
        notify(
            [export.requested_by_id], "export_ready",
            {"resource": export.resource, "format": export.format, "rows": counter.rows,
             "team_id": str(export.team_id), "export_id": str(export.id), "download": path,
             "expires": export.expires_at.strftime("%Y-%m-%d %H:%M UTC")},
            event_key=f"export:{export.id}:ready", team_id=export.team_id,
        )  # fmt: skip
    return BuildReport(export.id, counter.rows, stored.size, stored.sha256, path)


def record_failure(export_id: uuid.UUID, error: str) -> None:
    """Audit an export that will not be retried again (own transaction; the job's rolled back)."""
    export = db.session.get(Export, export_id)
    if export is None:
        return
    record_audit(
        "export.failed", actor_id=export.requested_by_id, team_id=export.team_id,
        subject_type="export", subject_id=export.id, data={"error": error[:500]},
    )  # fmt: skip
    db.session.commit()


def discard_partial(export_id: uuid.UUID, storage: ObjectStorage) -> None:
    """Remove an object a failed attempt may have stored (its row never pointed at it)."""
    export = db.session.get(Export, export_id)
    if export is not None and export.storage_key is None:
        storage.delete(storage_key(export))


def cleanup_expired(storage: ObjectStorage, batch: int = 200) -> int:
    """Beat: delete expired exports' objects and mark the rows (kept for history)."""
    removed = 0
    while True:
        expired = list(db.session.scalars(
            select(Export)
            .where(Export.storage_key.is_not(None), Export.expires_at <= datetime.now(UTC))
            .order_by(Export.expires_at).limit(batch)
            .with_for_update(skip_locked=True)  # two beats never delete the same batch twice
        ))  # fmt: skip
        if not expired:
            db.session.rollback()
            return removed
        for export in expired:
            assert export.storage_key is not None
            # Object first: if the commit below fails, the next run deletes (a no-op) again.
            storage.delete(export.storage_key)
            record_audit("export.expired", team_id=export.team_id, subject_type="export",
                         subject_id=export.id, data={"key": export.storage_key})  # fmt: skip
            export.storage_key = None
        db.session.commit()
        removed += len(expired)


# --- rows ----------------------------------------------------------------------------------


def _query(export: Export) -> tuple[list[str], Any]:
    """The header and the (team-scoped) column query of an export."""
    team_id, filters = export.team_id, export.filters or {}
    start, end = (datetime.fromisoformat(filters[k]) if filters.get(k) else None
                  for k in ("from", "to"))  # fmt: skip
    columns: Sequence[Any]
    if export.resource == "payments":
        columns = (Payment.id, Payment.created_at, Payment.amount, Payment.amount_refunded,
                   Payment.currency, Payment.status, Payment.description,
                   Payment.failure_reason, Payment.succeeded_at)  # fmt: skip
        query: Any = select(*columns).where(Payment.team_id == team_id)
        if filters.get("status"):
            query = query.where(Payment.status == filters["status"])
        stamp: Any = Payment.created_at
        # The same order as GET .../payments, so the file reads like the API's list.
        order: tuple[Any, ...] = (Payment.created_at.desc(), Payment.id.desc())
    elif export.resource == "inventory":
        columns = (
            InventoryItem.id, InventoryItem.sku, InventoryItem.name, InventoryItem.description,
            InventoryItem.quantity, InventoryItem.unit_price, InventoryItem.currency,
            InventoryItem.low_stock_threshold, InventoryItem.archived, InventoryItem.created_at,
            InventoryItem.updated_at,
        )  # fmt: skip
        query = select(*columns).where(InventoryItem.team_id == team_id)
        stamp, order = InventoryItem.created_at, (InventoryItem.sku,)
    elif export.resource == "audit_logs":
        columns = (AuditLog.id, AuditLog.created_at, AuditLog.action, AuditLog.actor_user_id,
                   AuditLog.subject_type, AuditLog.subject_id, AuditLog.data, AuditLog.ip,
                   AuditLog.request_id, AuditLog.hash)  # fmt: skip
        query = select(*columns).where(AuditLog.team_id == team_id)
        stamp, order = AuditLog.created_at, (AuditLog.id,)
    elif export.resource == "analytics":
        columns = (AnalyticsEvent.id, AnalyticsEvent.name, AnalyticsEvent.occurred_at,
                   AnalyticsEvent.properties, AnalyticsEvent.dedup_id)  # fmt: skip
        query = select(*columns).where(AnalyticsEvent.team_id == team_id)
        stamp, order = AnalyticsEvent.occurred_at, (AnalyticsEvent.id,)
    else:  # members
        columns = (TeamMember.user_id, User.email, User.name, TeamMember.role,
                   TeamMember.created_at)  # fmt: skip
        query = (select(*columns).join(User, User.id == TeamMember.user_id)
                 .where(TeamMember.team_id == team_id))  # fmt: skip
        stamp, order = TeamMember.created_at, (TeamMember.created_at, TeamMember.user_id)
    if start is not None:
        query = query.where(stamp >= start)
    if end is not None:
        query = query.where(stamp < end)
    header = ["joined_at" if c is TeamMember.created_at else c.key for c in columns]
    return header, query.order_by(*order)


class _Counter:
    """Counts rows as they stream past and reports progress every PROGRESS_EVERY rows."""

    def __init__(self, total: int, progress: Callable[[int], None]) -> None:
        self.total, self.progress, self.rows = total, progress, 0

    def wrap(self, rows: Iterable[Sequence[Any]]) -> Iterator[Sequence[Any]]:
        for row in rows:
            self.rows += 1
            if self.rows % PROGRESS_EVERY == 0:
                # 95 at most: storing the object's last part and the commit come after.
                self.progress(min(95, 95 * self.rows // max(self.total, 1)))
            yield row


def _encode(fmt: str, header: list[str], rows: Iterator[Sequence[Any]]) -> Iterator[bytes]:
    if fmt == "csv":
        return _csv_chunks(header, rows)
    if fmt == "jsonl":
        return _jsonl_chunks(header, rows)
    return _xlsx_chunks(header, rows)


def _text(value: Any) -> Any:
    """A JSON-friendly scalar: ids and times as strings, numbers and booleans kept."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if value is not None and not isinstance(value, str | int | float | bool | dict | list):
        return str(value)  # INET addresses and the like
    return value


def _json_cell(value: Any) -> Any:
    value = _text(value)
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    return value


def _cell(value: Any) -> Any:
    """A spreadsheet-safe cell: structured values as JSON; text that a spreadsheet would
    run as a formula gets a leading apostrophe (OWASP's CSV-injection advice)."""
    value = _json_cell(value)
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def _csv_chunks(header: list[str], rows: Iterator[Sequence[Any]]) -> Iterator[bytes]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if v is None else _csv_scalar(_cell(v)) for v in row])
        if buffer.tell() >= CHUNK_BYTES:
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue().encode()


def _csv_scalar(value: Any) -> Any:
    return ("true" if value else "false") if isinstance(value, bool) else value


def _jsonl_chunks(header: list[str], rows: Iterator[Sequence[Any]]) -> Iterator[bytes]:
    parts: list[str] = []
    size = 0
    for row in rows:
        line = json.dumps(dict(zip(header, (_text(v) for v in row), strict=True)),
                          separators=(",", ":"), default=str) + "\n"  # fmt: skip
        parts.append(line)
        size += len(line)
        if size >= CHUNK_BYTES:
            yield "".join(parts).encode()
            parts, size = [], 0
    yield "".join(parts).encode()


def _xlsx_chunks(header: list[str], rows: Iterator[Sequence[Any]]) -> Iterator[bytes]:
    """xlsx is a zip, written at the end: build it in a temporary file (xlsxwriter's
    constant-memory mode flushes each row to disk), then stream that file."""
    handle, path = tempfile.mkstemp(suffix=".xlsx", prefix="export-")
    os.close(handle)
    try:
        workbook = xlsxwriter.Workbook(path, {
            "constant_memory": True,
            # Data is data: never turn text into formulas, links or numbers.
            "strings_to_formulas": False, "strings_to_urls": False, "strings_to_numbers": False,
        })  # fmt: skip
        sheet = workbook.add_worksheet("export")
        sheet.write_row(0, 0, header)
        for index, row in enumerate(rows, start=1):
            # Typed string cells are never formulas here, so no apostrophe is needed.
            sheet.write_row(index, 0, [_json_cell(v) for v in row])
        workbook.close()
        with open(path, "rb") as fh:
            while chunk := fh.read(CHUNK_BYTES):
                yield chunk
    finally:
        os.unlink(path)
