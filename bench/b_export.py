"""B6: a 1,000,000-row analytics CSV export against PostgreSQL's own `COPY ... TO STDOUT`.

Measured in the same run, on the same rows (one INSERT ... generate_series, then
VACUUM ANALYZE and one read of the table so both contenders start from the same cache):

* baseline: `COPY (SELECT <the export's columns> FROM analytics_events WHERE team_id = ...
  ORDER BY id) TO STDOUT WITH CSV HEADER` (PostgreSQL's own text forms), streamed with
  psycopg's `cursor.copy()` into a file;
* export: POST /api/v1/teams/<id>/exports (the real API and `services.files.exports`), built by a
  real `celery worker` (prefork, concurrency 1, production settings, a private broker,
  local storage in the run's scratch directory); time from the job's `started_at` to its
  `finished_at`, and the pool child's peak RSS (VmHWM) growth between a 50-row warm-up
  export and the big one (same child).

The export file is checked (row count, line count, SHA-256) before anything is reported.
The events are deleted afterwards, so later groups start from an empty table.
BENCH_EXPORT_ROWS overrides the row count (development runs).
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from flask.testing import FlaskClient
from flask_jwt_extended import create_access_token
from psycopg import sql
from sqlalchemy import select

from app import create_app
from bench.harness import Context, Row, private_broker, production_settings, say, worker
from config import Settings
from extensions import db
from integrations.storage_backends import build_storage
from models import Export, Job
from services.identity import accounts
from services.teams import teams
from tests.support import fetch_job, wait_job

ROWS = int(os.environ.get("BENCH_EXPORT_ROWS", "1000000"))
WARM_ROWS = 50
MAX_RATIO = 1.5  # export time / COPY time
MAX_RSS_GROWTH_MB = 100.0
# The export's columns (services/files/export_sources.py, resource "analytics"), in its order.
COLUMNS = ("id", "name", "occurred_at", "properties", "dedup_id")


def run(ctx: Context) -> list[Row]:
    conninfo = ctx.libpq_url()
    with private_broker(ctx.work / "export-broker") as broker:
        settings = production_settings(
            ctx.base, broker.url(0),
            storage_backend="local", storage_local_dir=str(ctx.work / "export-storage"),
            ratelimit_enabled=False,  # one client posts everything; limits are not measured
        )  # fmt: skip
        app = create_app(settings)
        with app.app_context():
            try:
                return _measure(app.test_client(), settings, conninfo, ctx.work)
            finally:
                db.session.remove()
                with psycopg.connect(conninfo, autocommit=True) as conn:
                    conn.execute("TRUNCATE analytics_events")


def _measure(client: FlaskClient, settings: Settings, conninfo: str, work: Path) -> list[Row]:
    user = accounts.create_user(f"bench-export-{secrets.token_hex(4)}@example.com",
                                secrets.token_hex(16), "Bench", is_admin=False)  # fmt: skip
    team_id = teams.create_team(user, "Bench export").team.id
    warm_team_id = teams.create_team(user, "Bench export warm-up").team.id
    token = create_access_token(identity=str(user.id))
    say(f"inserting {ROWS:,} analytics events ...")
    fill_seconds = _fill(conninfo, team_id, warm_team_id)
    say(f"  {fill_seconds:.1f} s")

    say("baseline: COPY ... TO STDOUT WITH CSV HEADER ...")
    baseline_seconds, baseline_bytes, baseline_lines = _copy_baseline(
        conninfo, team_id, work / "baseline.csv"
    )
    if baseline_lines != ROWS + 1:
        raise RuntimeError(f"COPY wrote {baseline_lines} lines, expected {ROWS + 1}")
    say(f"  {baseline_seconds:.2f} s, {baseline_bytes:,} bytes")

    with worker(settings, "export", concurrency=1) as process:
        warm = _request_export(client, warm_team_id, token)
        warm_job = wait_job(warm["job"]["id"], "succeeded", timeout=60, describe=process.describe)
        if warm_job.worker is None:
            raise RuntimeError("the warm-up job records no worker")
        pid = int(warm_job.worker.rpartition(":")[2])
        rss_before = _peak_rss_kb(pid)

        say(f"export: {ROWS:,} rows through the API and the worker ...")
        wall_start = time.perf_counter()
        big = _request_export(client, team_id, token)
        done = wait_job(big["job"]["id"], "succeeded", timeout=1800, describe=process.describe)
        wall_seconds = time.perf_counter() - wall_start
        if done.worker != warm_job.worker:
            raise RuntimeError(f"different pool children: {warm_job.worker} vs {done.worker}")
        rss_after = _peak_rss_kb(pid)

    export_seconds = _job_seconds(done)
    say(f"  {export_seconds:.2f} s (job), {wall_seconds:.2f} s (request to succeeded)")
    row = _export_row(big["export"]["id"])
    digest, lines = hashlib.sha256(), 0
    for chunk in build_storage(settings).read(row.storage_key or ""):
        digest.update(chunk)
        lines += chunk.count(b"\n")
    if row.row_count != ROWS or lines != ROWS + 1 or digest.hexdigest() != row.sha256:
        raise RuntimeError(f"export check failed: rows {row.row_count}, lines {lines}")
    if fetch_job(big["job"]["id"]).status != "succeeded":
        raise RuntimeError("the export job is no longer succeeded")

    ratio = export_seconds / baseline_seconds
    growth_mb = (rss_after - rss_before) / 1024
    return [
        Row("B6", f"CSV export of {ROWS:,} rows (job start to finish)", export_seconds, "s",
            baseline=baseline_seconds, baseline_what="COPY ... TO STDOUT WITH CSV", ratio=ratio,
            target=f"<= {MAX_RATIO}x", met=ratio <= MAX_RATIO,
            notes=f"{row.size:,} B vs COPY's {baseline_bytes:,} B; request to succeeded "
                  f"{wall_seconds:.2f} s; fill {fill_seconds:.1f} s"),
        Row("B6", "export worker peak RSS growth", growth_mb, "MB",
            target=f"<= {MAX_RSS_GROWTH_MB:.0f} MB", met=growth_mb <= MAX_RSS_GROWTH_MB,
            notes=f"pool child VmHWM {rss_before / 1024:.1f} -> {rss_after / 1024:.1f} MB "
                  f"over a {WARM_ROWS}-row warm-up export"),
    ]  # fmt: skip


def _fill(conninfo: str, team_id: uuid.UUID, warm_team_id: uuid.UUID) -> float:
    """Insert the events (the same rows as the memory test's, just more); seconds taken."""
    start = time.perf_counter()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        insert = (
            "INSERT INTO analytics_events (team_id, name, occurred_at, properties, dedup_id) "
            "SELECT %s, 'page_view', now() - make_interval(secs => g), "
            "jsonb_build_object('page', '/p/' || (g %% 500), 'i', g), 'd' || g "
            "FROM generate_series(1, %s) AS g"
        )
        conn.execute(insert, (team_id, ROWS))
        conn.execute(insert, (warm_team_id, WARM_ROWS))
        conn.execute("VACUUM ANALYZE analytics_events")
        # Same page cache for both contenders: read the table once before either runs.
        conn.execute("SELECT count(*), sum(length(properties::text)) FROM analytics_events")
    return time.perf_counter() - start


def _copy_baseline(conninfo: str, team_id: uuid.UUID, out: Path) -> tuple[float, int, int]:
    """COPY the same rows and columns to a file; (seconds, bytes, lines)."""
    query = sql.SQL(
        "COPY (SELECT {cols} FROM analytics_events WHERE team_id = {team} ORDER BY id) "
        "TO STDOUT WITH CSV HEADER"
    ).format(
        cols=sql.SQL(", ").join(sql.Identifier(c) for c in COLUMNS),
        team=sql.Literal(str(team_id)),
    )
    size = lines = 0
    with psycopg.connect(conninfo) as conn, out.open("wb") as fh:
        start = time.perf_counter()
        with conn.cursor().copy(query) as copy:
            for data in copy:
                chunk = bytes(data)
                fh.write(chunk)
                size += len(chunk)
                lines += chunk.count(b"\n")
        fh.flush()
        seconds = time.perf_counter() - start
    out.unlink()
    return seconds, size, lines


def _peak_rss_kb(pid: int) -> int:
    """VmHWM: the process's peak resident set size so far (kB)."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no VmHWM in /proc/{pid}/status")
    return int(match.group(1))


def _request_export(client: FlaskClient, team_id: uuid.UUID, token: str) -> dict[str, Any]:
    response = client.post(
        f"/api/v1/teams/{team_id}/exports",
        json={"resource": "analytics", "format": "csv"},
        headers={"Authorization": f"Bearer {token}"},
    )
    if response.status_code != 202:
        raise RuntimeError(f"export request: {response.status_code} {response.get_data(True)}")
    body: dict[str, Any] = response.get_json()
    return body


def _export_row(export_id: str) -> Export:
    db.session.rollback()
    row = db.session.scalar(
        select(Export)
        .where(Export.id == uuid.UUID(export_id))
        .execution_options(populate_existing=True)
    )
    if row is None:
        raise RuntimeError(f"export {export_id} not found")
    return row


def _job_seconds(job: Job) -> float:
    if job.started_at is None or job.finished_at is None:
        raise RuntimeError(f"job {job.id} has no start/finish time")
    return (job.finished_at - job.started_at).total_seconds()
