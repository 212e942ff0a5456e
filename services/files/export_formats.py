"""How an export's rows become bytes, in ~1 MiB chunks: CSV written by PostgreSQL itself
(`COPY ... TO STDOUT`, the formatting done in the SELECT: ISO-8601 UTC times, the
CSV-injection guard, JSON as jsonb's text), JSON lines and xlsx encoded here from a
server-side cursor's rows; and the row counter that reports the job's progress meanwhile.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from datetime import date, datetime
from typing import Any

import xlsxwriter
from flask import current_app
from sqlalchemy import JSON, Boolean, ColumnElement, DateTime, Select, String, literal_column, text

from extensions import db
from services.files.export_sources import on_driver

CONTENT_TYPES = {
    "csv": "text/csv; charset=utf-8",
    "jsonl": "application/x-ndjson",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}
CHUNK_BYTES = 1024 * 1024  # what one storage.write chunk holds (multipart parts are >= 5 MiB)
PROGRESS_EVERY = 5000  # rows between progress reports (each is one small UPDATE) ...
PROGRESS_SECONDS = 0.5  # ... and at most one report this often
XLSX_MAX_ROWS = 1_048_576  # Excel's sheet limit, header included
# Cells starting with these are formulas to spreadsheet programs (CSV/formula injection).
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


class RowCounter:
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


def csv_column(column: Any, name: str) -> ColumnElement[Any]:
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


class CsvCopy:
    """`COPY (query) TO STDOUT WITH (FORMAT csv, HEADER)` on the session's connection (in
    the job's transaction), as ~CHUNK_BYTES chunks; the row count is COPY's own."""

    def __init__(self, query: Select[Any], counter: RowCounter) -> None:
        self.query, self.counter = query, counter

    def chunks(self) -> Generator[bytes]:
        driver, sql, params = on_driver(self.query)
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


def encode(fmt: str, header: list[str], rows: Iterator[Sequence[Any]]) -> Iterator[bytes]:
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
