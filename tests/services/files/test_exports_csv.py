"""CSV exports are written by PostgreSQL (`COPY (SELECT ...) TO STDOUT`): the cells it
writes, and what happens to the session when the upload fails half-way."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from apiflask import APIFlask
from sqlalchemy import func, select, text

from extensions import db
from integrations.storage import StorageUnavailable, StoredObject
from integrations.storage_local import LocalStorage
from models import AnalyticsEvent, Export
from services.files import export_formats, export_job
from tests.factories import make_team, make_user

NOW = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
# (name, occurred_at, properties, dedup_id) and what the file must hold for them.
EVENTS: list[tuple[str, datetime, Any, str | None]] = [
    ("page.view", NOW, {"b": 1, "aa": [1, None, {"z": "null"}]}, "=cmd"),
    ("=evil", NOW + timedelta(microseconds=120), {}, "-1"),
    ("page.view", NOW + timedelta(seconds=1, microseconds=5), {"s": 'a, b": c', "t": "x\ny"}, ""),
    ("page.view", NOW + timedelta(seconds=2), {"é": "ü", "n": 1.5, "k": None}, None),
    ("page.view", NOW + timedelta(seconds=3), "=scalar", 'quo"te\nline'),
    ("page.view", NOW + timedelta(seconds=4), [1, {"a": True}], "@home"),
]


def _insert(team_id: uuid.UUID, rows: Iterable[tuple[str, datetime, Any, str | None]]) -> None:
    for name, occurred_at, properties, dedup_id in rows:
        db.session.execute(
            text("INSERT INTO analytics_events (team_id, name, occurred_at, properties, dedup_id)"
                 " VALUES (:team, :name, :at, CAST(:properties AS jsonb), :dedup)"),
            {"team": team_id, "name": name, "at": occurred_at,
             "properties": json.dumps(properties), "dedup": dedup_id},
        )  # fmt: skip
    db.session.commit()


def guarded(value: str) -> str:
    return "'" + value if value[:1] in export_formats.FORMULA_PREFIXES else value


def _export(team_id: uuid.UUID, user_id: uuid.UUID) -> Export:
    export = Export(id=uuid.uuid4(), team_id=team_id, requested_by_id=user_id,
                    resource="analytics", format="csv", filters={})  # fmt: skip
    db.session.add(export)
    db.session.commit()
    return export


def test_csv_cells_are_formatted_by_postgres_as_the_file_promises(
    app: APIFlask, tmp_path: Path
) -> None:
    user = make_user()
    team_id = make_team(user)
    _insert(team_id, EVENTS)
    export = _export(team_id, user.id)
    storage = LocalStorage(tmp_path, secret_key="s" * 32, base_url="http://localhost")
    timeout = text("SELECT current_setting('statement_timeout')")
    before = db.session.scalar(timeout)

    report = export_job.build(export.id, storage, lambda percent: None)
    # The COPY ran with the job's statement timeout; the transaction's own is back.
    assert db.session.scalar(timeout) == before
    db.session.commit()

    assert report is not None and report.row_count == len(EVENTS)
    data = b"".join(storage.read(export_job.storage_key(export)))
    assert hashlib.sha256(data).hexdigest() == report.sha256 and len(data) == report.size
    ids = db.session.scalars(select(AnalyticsEvent.id).order_by(AnalyticsEvent.id)).all()
    header, *rows = list(csv.reader(io.StringIO(data.decode(), newline="")))
    assert header == ["id", "name", "occurred_at", "properties", "dedup_id"]
    assert [int(r[0]) for r in rows] == list(ids)  # the API's order: by id

    for row, (name, occurred_at, properties, dedup_id) in zip(rows, EVENTS, strict=True):
        # Times: Python's isoformat() in UTC (no fraction when it is zero).
        assert row[2] == occurred_at.astimezone(UTC).isoformat()
        # Text that a spreadsheet would run as a formula gets an apostrophe.
        assert row[1] == guarded(name)
        assert row[4] == guarded(dedup_id or "")
        # JSON: jsonb's canonical text of the same document (keys in jsonb's order).
        assert json.loads(row[3]) == properties
        assert row[3] == json.dumps(json.loads(row[3]), ensure_ascii=False)
        assert not row[3].startswith(export_formats.FORMULA_PREFIXES)  # "=scalar" stays quoted
    # An empty string and NULL are both an empty, unquoted field; lines end in \n.
    assert data.count(b",\n") == 2 and b'""\n' not in data and b"\r\n" not in data


@pytest.mark.timeout(60)
def test_a_failed_upload_cancels_the_copy_and_the_session_stays_usable(
    app: APIFlask, tmp_path: Path
) -> None:
    user = make_user()
    team_id = make_team(user)
    # ~2 MiB of CSV: the COPY is still streaming when the first chunk is handed over.
    db.session.execute(
        text("INSERT INTO analytics_events (team_id, name, occurred_at, properties, dedup_id) "
             "SELECT :team, 'page.view', now() - make_interval(secs => g), "
             "jsonb_build_object('page', '/p/' || g), 'd' || g FROM generate_series(1, 30000) g"),
        {"team": team_id},
    )  # fmt: skip
    db.session.commit()
    export = _export(team_id, user.id)

    class FailingStorage:
        def write(self, key: str, chunks: Iterable[bytes], *, content_type: str) -> StoredObject:
            for _chunk in chunks:
                raise StorageUnavailable("S3 went away")
            raise AssertionError("no chunk")

    try:
        export_job.build(export.id, FailingStorage(), lambda percent: None)  # type: ignore[arg-type]
    except StorageUnavailable:
        # As the job does: roll back while the exception, and the frames in its traceback
        # (the upload's, holding the COPY's generator), are still alive. Had the COPY not
        # been closed when the failure left `build`, this rollback would hang mid-COPY.
        db.session.rollback()
    else:
        pytest.fail("the upload's failure was swallowed")
    # The connection is back in a usable state and nothing was recorded.
    assert db.session.scalar(select(func.count()).select_from(AnalyticsEvent)) == 30000
    stored = db.session.get(Export, export.id)
    assert stored is not None and stored.storage_key is None and stored.sha256 is None
