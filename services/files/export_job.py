"""The `exports.build` job: stream an export's rows into one object, then record it.

Memory stays constant whatever the size, and the bytes go straight into
`ObjectStorage.write` in ~1 MiB chunks (it computes size and SHA-256 on the way): CSV is
written by PostgreSQL itself (COPY), JSON lines and xlsx rows come from a server-side
cursor (see export_formats.py); the rows are each resource's query (export_sources.py).

The export row gets its `storage_key` only in the job's final transaction, after the whole
object is stored, so a failed or half-written export is never offered for download. Also
here: the clean-up after a failed attempt and the daily removal of expired files.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import current_app
from sqlalchemy import func, select

from extensions import db
from integrations.storage import ObjectStorage
from models import Export, Job, TeamMember
from services.core import permissions
from services.core.audit import record_audit
from services.files.export_formats import (
    CONTENT_TYPES,
    XLSX_MAX_ROWS,
    CsvCopy,
    RowCounter,
    csv_column,
    encode,
)
from services.files.export_sources import estimated_rows, export_query
from services.files.exports import RESOURCE_PERMISSION, download_path
from services.jobs.errors import PermanentError
from services.messaging.notifications import notify

FETCH_ROWS = 2000  # rows per round trip of the server-side cursor


def storage_key(export: Export) -> str:
    return f"teams/{export.team_id}/exports/{export.id}.{export.format}"


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
    header, columns, query = export_query(export)
    key, content_type = storage_key(export), CONTENT_TYPES[export.format]
    # Nothing is written yet: end the reads' transaction, or with a replica it would sit
    # idle on the primary (holding, behind a pooler, a server connection) for as long as
    # the rows stream, and DB_IDLE_IN_TRANSACTION_TIMEOUT_MS would end it under us.
    db.session.commit()
    # The rows (and their count) from the read replica when there is one: an export is
    # the data as the replica has it when the job runs.
    with db.replica_reads():
        if export.format == "xlsx":
            total = int(db.session.scalar(select(func.count()).select_from(query.subquery())) or 0)
            if total + 1 > XLSX_MAX_ROWS:
                raise ExportRefused(f"{total} rows do not fit in one xlsx sheet; use csv or jsonl.")
        else:
            # Only for the progress bar: counting a million rows first costs a fifth of the
            # export itself, the planner's estimate costs nothing.
            total = estimated_rows(query)
        counter = RowCounter(total, progress)
        if export.format == "csv":
            cells = [csv_column(c, name) for c, name in zip(columns, header, strict=True)]
            # Closed before anything else runs on the session: a COPY cut short by a failed
            # upload is cancelled there, and the connection is left fit for the rollback.
            with closing(CsvCopy(query.with_only_columns(*cells), counter).chunks()) as chunks:
                stored = storage.write(key, chunks, content_type=content_type)
        else:
            # A server-side cursor: PostgreSQL sends FETCH_ROWS at a time, never the whole
            # result.
            rows = counter.wrap(db.session.execute(query.execution_options(yield_per=FETCH_ROWS)))
            stored = storage.write(
                key, encode(export.format, header, rows), content_type=content_type
            )
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


def build_or_clean_up(
    export_id: uuid.UUID,
    storage: ObjectStorage,
    progress: Callable[[int], None],
    *,
    job_id: uuid.UUID,
    attempt: int,
) -> BuildReport | None:
    """`build`, and after a failed attempt: discard what it stored, audit the failure once
    no attempt is left, and make a refusal permanent (PermanentError: no retry)."""
    try:
        return build(export_id, storage, progress)
    except Exception as exc:
        permanent = isinstance(exc, ExportRefused)
        db.session.rollback()
        # Whatever an attempt managed to store is not an export: remove it now.
        # Best effort: a leftover object is never served (no row points at it).
        with contextlib.suppress(Exception):
            discard_partial(export_id, storage)
        job = db.session.get(Job, job_id)
        if permanent or (job is not None and attempt >= job.max_attempts):
            record_failure(export_id, f"{type(exc).__name__}: {exc}")
        if permanent:
            raise PermanentError(str(exc)) from exc
        raise


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
