"""Exports: a team's data written to one file in object storage by the `exports.build` job.

Memory stays constant whatever the size, and the bytes go straight into
`ObjectStorage.write` in ~1 MiB chunks (it computes size and SHA-256 on the way):

* CSV is written by PostgreSQL itself: `COPY (SELECT <formatted columns> ...) TO STDOUT
  WITH (FORMAT csv, HEADER)`, read with psycopg's `cursor.copy()`. The SELECT does the
  formatting the file promises (ISO-8601 UTC times, the CSV-injection guard, JSON as
  jsonb's text; see `_csv_column`), so no row ever becomes a Python object: about as
  fast as the database can produce the rows.
* JSON lines and xlsx rows come from a server-side cursor (`yield_per`) and are encoded
  here (xlsx goes through a temporary file written by xlsxwriter in constant-memory mode,
  then streamed the same way).

The export row gets its `storage_key` only in the job's final transaction, after the whole
object is stored, so a failed or half-written export is never offered for download.

Who may export what: `exports.create` plus the resource's own read permission, checked
when the export is requested, again when the job builds it (the requester's role may have
changed) and again at download time.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import xlsxwriter
from flask import current_app
from sqlalchemy import (
    JSON,
    Boolean,
    ColumnElement,
    DateTime,
    Select,
    String,
    func,
    literal_column,
    select,
    text,
)

from extensions import db
from integrations.storage import ObjectStorage
from models import AnalyticsEvent, AuditLog, Export, InventoryItem, Job, Payment, TeamMember, User
from services.core import permissions
from services.core.audit import record_audit
from services.core.errors import Conflict, Forbidden, NotFound, ServiceError, ValidationFailed
from services.core.pagination import Page, paginate
from services.jobs import names
from services.jobs.outbox import enqueue
from services.messaging.notifications import notify

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
PROGRESS_EVERY = 5000  # rows between progress reports (each is one small UPDATE) ...
PROGRESS_SECONDS = 0.5  # ... and at most one report this often
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
        names.EXPORTS_BUILD, args={"export_id": str(export.id)}, user_id=user.id,
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
    header, columns, query = _query(export)
    if export.format == "xlsx":
        total = int(db.session.scalar(select(func.count()).select_from(query.subquery())) or 0)
        if total + 1 > XLSX_MAX_ROWS:
            raise ExportRefused(f"{total} rows do not fit in one xlsx sheet; use csv or jsonl.")
    else:
        # Only for the progress bar: counting a million rows first costs a fifth of the
        # export itself, the planner's estimate costs nothing.
        total = _estimated_rows(query)
    counter = _Counter(total, progress)
    key, content_type = storage_key(export), CONTENT_TYPES[export.format]
    if export.format == "csv":
        cells = [_csv_column(c, name) for c, name in zip(columns, header, strict=True)]
        # Closed before anything else runs on the session: a COPY cut short by a failed
        # upload is cancelled there, and the connection is left fit for the rollback.
        with closing(_CsvCopy(query.with_only_columns(*cells), counter).chunks()) as chunks:
            stored = storage.write(key, chunks, content_type=content_type)
    else:
        # A server-side cursor: PostgreSQL sends FETCH_ROWS at a time, never the whole result.
        rows = counter.wrap(db.session.execute(query.execution_options(yield_per=FETCH_ROWS)))
        stored = storage.write(key, _encode(export.format, header, rows), content_type=content_type)
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


def _query(export: Export) -> tuple[list[str], Sequence[Any], Any]:
    """The header, the columns and the (team-scoped, ordered) query of an export."""
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
    return header, columns, query.order_by(*order)


def _on_driver(query: Select[Any]) -> tuple[Any, str, dict[str, Any]]:
    """(psycopg connection of the session's transaction, SQL, parameters) of `query`,
    for statements that wrap it (EXPLAIN, COPY) and so must go to the driver itself."""
    connection = db.session.connection()
    compiled = query.compile(dialect=connection.dialect)
    driver = connection.connection.driver_connection
    assert driver is not None
    return driver, str(compiled), dict(compiled.params)


def _estimated_rows(query: Select[Any]) -> int:
    """The planner's row estimate for `query` (EXPLAIN, nothing is read)."""
    driver, sql, params = _on_driver(query)
    with driver.cursor() as cursor:
        cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
        row = cursor.fetchone()
    plan = row[0] if row else None
    if isinstance(plan, str):
        plan = json.loads(plan)
    try:
        return max(0, int(plan[0]["Plan"]["Plan Rows"]))  # type: ignore[index]
    except (TypeError, LookupError, ValueError):
        return 0


class _Counter:
    """Counts rows as they stream past and reports progress every PROGRESS_EVERY rows, at
    most once per PROGRESS_SECONDS (each report is an UPDATE and a commit)."""

    def __init__(self, total: int, progress: Callable[[int], None]) -> None:
        self.total, self.progress, self.rows = total, progress, 0
        self._reported_rows, self._reported_at = 0, time.monotonic()

    def wrap(self, rows: Iterable[Sequence[Any]]) -> Iterator[Sequence[Any]]:
        for row in rows:
            self.rows += 1
            if self.rows % PROGRESS_EVERY == 0:
                self.advance(self.rows)
            yield row

    def advance(self, rows: int) -> None:
        """`rows` are out so far: report them once PROGRESS_EVERY more rows and
        PROGRESS_SECONDS have passed since the last report."""
        now = time.monotonic()
        if (
            rows - self._reported_rows < PROGRESS_EVERY
            or now - self._reported_at < PROGRESS_SECONDS
        ):
            return
        self._reported_rows, self._reported_at = rows, now
        # 95 at most: storing the object's last part and the commit come after.
        self.progress(min(95, 95 * rows // max(self.total, 1)))


# --- CSV, written by PostgreSQL ------------------------------------------------------------
#
# What each cell costs PostgreSQL matters: the export is as fast as the one backend that
# formats and sends the rows (a plain COPY of the raw columns takes ~0.55 s of its CPU
# per million analytics rows). Measured per million rows: the formula guard +0.1 s, the
# ISO-8601 times +0.27 s; compacting JSON would add +0.55 s (json_strip_nulls of each
# document, plus a regular expression when it holds a null), so JSON cells are jsonb's
# own canonical text (`{"i": 1, "page": "/p/1"}`) at no cost.

# ascii() of '' (0) and of each formula prefix: one integer test per cell, and only the
# cells that start with one of them take the slower branch.
_GUARD_CODES = ", ".join(["0", *(str(ord(prefix)) for prefix in FORMULA_PREFIXES)])


def _guarded(value: str) -> str:
    """SQL: a text cell that spreadsheets will not run as a formula (a leading apostrophe,
    OWASP's advice); '' becomes NULL, so both are an empty, unquoted field."""
    return (f"CASE WHEN ascii({value}) IN ({_GUARD_CODES}) THEN"
            f" CASE WHEN {value} = '' THEN NULL ELSE '''' || {value} END"
            f" ELSE {value} END")  # fmt: skip


def _iso8601(value: str) -> str:
    """SQL: a timestamptz as Python's `isoformat()` of it in UTC:
    2026-11-25T10:21:35.123400+00:00, without the fraction when it is zero."""
    pattern = 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'
    return f"replace(to_char({value} AT TIME ZONE 'UTC', '{pattern}'), '.000000+', '+')"


def _csv_column(column: Any, name: str) -> ColumnElement[Any]:
    """The SELECT expression that writes `column` into the CSV as the file promises:
    times ISO-8601 (UTC), booleans true/false, text guarded against formula injection,
    JSON as jsonb's canonical text (keys in jsonb's order, `": "` and `", "` separators;
    JSON's syntax leaves no room for a formula, so it needs no guard); ids, numbers and
    addresses in PostgreSQL's text form (the same as Python's). Labelled `name`, which
    COPY's HEADER writes."""
    sql = str(column.compile(dialect=db.session.get_bind().dialect))
    kind = column.type
    if isinstance(kind, DateTime):
        expression = _iso8601(sql)
    elif isinstance(kind, JSON | Boolean):
        expression = f"CAST({sql} AS text)"
    elif isinstance(kind, String):
        expression = _guarded(sql)
    else:
        expression = sql
    return literal_column(expression).label(name)


class _CsvCopy:
    """`COPY (query) TO STDOUT WITH (FORMAT csv, HEADER)` on the session's connection (in
    the job's transaction), as ~CHUNK_BYTES chunks; the row count is COPY's own."""

    def __init__(self, query: Select[Any], counter: _Counter) -> None:
        self.query, self.counter = query, counter

    def chunks(self) -> Generator[bytes]:
        driver, sql, params = _on_driver(self.query)
        statement = f"COPY ({sql}) TO STDOUT WITH (FORMAT csv, HEADER)"
        # One statement writes the whole file: it gets the job's time, not a request's.
        limit = str(current_app.config["SETTINGS"].task_time_limit * 1000)
        before = db.session.execute(
            text("SELECT current_setting('statement_timeout'),"
                 " set_config('statement_timeout', :limit, true)"),
            {"limit": limit},
        ).scalar_one()  # fmt: skip
        buffer, lines = bytearray(), 0
        with driver.cursor() as cursor:
            # psycopg binds the parameters client-side (COPY takes none of its own).
            with cursor.copy(statement, params) as copy:
                for data in copy:
                    buffer += data
                    if len(buffer) >= CHUNK_BYTES:
                        lines += buffer.count(b"\n")  # rows, give or take quoted newlines
                        yield bytes(buffer)
                        buffer.clear()
                        self.counter.advance(lines - 1)  # the header is no row
            self.counter.rows = max(cursor.rowcount, 0)
        db.session.execute(text("SELECT set_config('statement_timeout', :before, true)"),
                           {"before": before})  # fmt: skip
        yield bytes(buffer)


def _encode(fmt: str, header: list[str], rows: Iterator[Sequence[Any]]) -> Iterator[bytes]:
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
