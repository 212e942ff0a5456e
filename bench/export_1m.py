"""B6: a 1,000,000-row analytics CSV export against PostgreSQL's own `COPY ... TO STDOUT`.

Run with `make bench` (database maycole_bench, Redis db 3, found or started by
scripts/devservices.py). The database's schema is dropped and rebuilt with the real
migrations on every run, then filled with one INSERT ... generate_series.

Measured in the same run, on the same rows:

* baseline: `COPY (SELECT <the export's columns> ... ORDER BY id) TO STDOUT WITH CSV HEADER`
  streamed with psycopg's `cursor.copy()` into a file;
* export: POST /api/v1/teams/<id>/exports (the real API and `services.exports`), built by a
  real `celery worker` subprocess (prefork, concurrency 1, production settings, its own
  broker, local storage in a temporary directory); time from the job's `started_at` to
  its `finished_at`, and the pool child's peak RSS (VmHWM) growth between a warm-up export
  of 50 rows and the big one.

Prints a table and writes bench/results/latest.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from flask.testing import FlaskClient
from flask_jwt_extended import create_access_token
from psycopg import sql
from sqlalchemy import create_engine, make_url, select, text

from app import create_app
from cli import alembic_config
from config import Settings, load_settings
from extensions import db
from integrations.storage_backends import build_storage
from models import Export, Job
from scripts.devservices import RedisServer, free_port
from services import accounts, teams
from tests.support import ROOT, Worker, fetch_job, wait_job

ROWS = 1_000_000
WARM_ROWS = 50
# Targets from the benchmarks issue (B6).
MAX_RATIO = 1.5
MAX_RSS_GROWTH_MB = 100.0
RESULTS = ROOT / "bench" / "results" / "latest.json"
LOG = ROOT / "var" / "bench-logs" / "export-worker.log"
# The export's columns (services.exports._query, resource "analytics"), in its order.
COLUMNS = ("id", "name", "occurred_at", "properties", "dedup_id")


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _libpq_url(database_url: str) -> str:
    """The SQLAlchemy URL as a plain postgresql:// URL psycopg accepts."""
    url = make_url(database_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


def _peak_rss_kb(pid: int) -> int:
    """VmHWM: the process's peak resident set size so far (kB)."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no VmHWM in /proc/{pid}/status")
    return int(match.group(1))


def _git_sha() -> str:
    git = shutil.which("git")
    if git is None:
        return "unknown"
    done = subprocess.run(  # noqa: S603 (a fixed command line, no outside input)
        [git, "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    return done.stdout.strip() or "unknown"


def _settings(broker_url: str, storage_dir: Path) -> Settings:
    """Production settings (fresh strong secrets) on a private broker and local storage."""
    return load_settings(
        app_env="production",
        secret_key=secrets.token_hex(32),
        jwt_secret_key=secrets.token_hex(32),
        celery_broker_url=broker_url,
        storage_backend="local",
        storage_local_dir=str(storage_dir),
        ratelimit_enabled=False,  # one client posts everything; limits are not measured here
    )


def _rebuild_schema(database_url: str) -> None:
    name = make_url(database_url).database or ""
    if not name.endswith("_bench"):
        raise SystemExit(f"refusing to drop the schema of {name!r}: not a *_bench database")
    engine = create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    from alembic import command

    command.upgrade(alembic_config(database_url), "head")


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
    return seconds, size, lines


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


def run() -> dict[str, Any]:
    base = load_settings()  # DATABASE_URL / REDIS_URL from devservices
    conninfo = _libpq_url(base.database_url)
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        work = Path(tmp)
        broker = RedisServer(free_port(), work)
        broker.start()
        try:
            settings = _settings(broker.url(0), work / "storage")
            _say(f"rebuilding {make_url(base.database_url).database} (alembic upgrade head) ...")
            _rebuild_schema(settings.database_url)
            app = create_app(settings)
            with app.app_context():
                return _measure(app.test_client(), settings, conninfo, work)
        finally:
            broker.stop()


def _measure(client: FlaskClient, settings: Settings, conninfo: str, work: Path) -> dict[str, Any]:
    user = accounts.create_user("bench@example.com", secrets.token_hex(16), "Bench", is_admin=False)
    team_id = teams.create_team(user, "Bench").team.id
    warm_team_id = teams.create_team(user, "Warm-up").team.id
    token = create_access_token(identity=str(user.id))
    _say(f"inserting {ROWS:,} analytics events ...")
    fill_seconds = _fill(conninfo, team_id, warm_team_id)
    _say(f"  {fill_seconds:.1f} s")

    _say("baseline: COPY ... TO STDOUT WITH CSV HEADER ...")
    baseline_seconds, baseline_bytes, baseline_lines = _copy_baseline(
        conninfo, team_id, work / "baseline.csv"
    )
    if baseline_lines != ROWS + 1:
        raise RuntimeError(f"COPY wrote {baseline_lines} lines, expected {ROWS + 1}")
    _say(f"  {baseline_seconds:.2f} s, {baseline_bytes:,} bytes")

    worker = Worker(settings, LOG, concurrency=1)
    worker.start()
    try:
        warm = _request_export(client, warm_team_id, token)
        warm_job = wait_job(warm["job"]["id"], "succeeded", timeout=60, describe=worker.describe)
        if warm_job.worker is None:
            raise RuntimeError("the warm-up job records no worker")
        pid = int(warm_job.worker.rpartition(":")[2])
        rss_before = _peak_rss_kb(pid)

        _say(f"export: {ROWS:,} rows through the API and the worker ...")
        wall_start = time.perf_counter()
        big = _request_export(client, team_id, token)
        done = wait_job(big["job"]["id"], "succeeded", timeout=1800, describe=worker.describe)
        wall_seconds = time.perf_counter() - wall_start
        if done.worker != warm_job.worker:
            raise RuntimeError(f"different pool children: {warm_job.worker} vs {done.worker}")
        rss_after = _peak_rss_kb(pid)
    finally:
        worker.stop()

    export_seconds = _job_seconds(done)
    _say(f"  {export_seconds:.2f} s (job), {wall_seconds:.2f} s (request to succeeded)")
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
    return {
        "benchmark": "B6 export_1m (analytics, csv)",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_sha": _git_sha(),
        "machine": {
            "cpu_count": os.cpu_count(),
            "python_version": platform.python_version(),
            "platform": platform.platform(),
        },
        "figures": {
            "rows": ROWS,
            "baseline_seconds": round(baseline_seconds, 3),
            "baseline_bytes": baseline_bytes,
            "export_seconds": round(export_seconds, 3),
            "export_wall_seconds": round(wall_seconds, 3),
            "export_bytes": row.size,
            "bytes": row.size,
            "ratio": round(ratio, 3),
            "rss_before_mb": round(rss_before / 1024, 1),
            "rss_after_mb": round(rss_after / 1024, 1),
            "rss_growth_mb": round(growth_mb, 1),
            "fill_seconds": round(fill_seconds, 3),
        },
        "targets": {
            "ratio_max": MAX_RATIO,
            "ratio_met": ratio <= MAX_RATIO,
            "rss_growth_mb_max": MAX_RSS_GROWTH_MB,
            "rss_growth_met": growth_mb <= MAX_RSS_GROWTH_MB,
        },
    }


def table(result: dict[str, Any]) -> str:
    """The figures as a Markdown table."""
    f, t = result["figures"], result["targets"]

    def verdict(met: bool) -> str:
        return "met" if met else "NOT met"

    rows = [
        ("rows", f"{f['rows']:,}", ""),
        ("COPY baseline", f"{f['baseline_seconds']:.2f} s ({f['baseline_bytes']:,} B)", ""),
        ("export job", f"{f['export_seconds']:.2f} s ({f['export_bytes']:,} B)", ""),
        ("export, request to succeeded", f"{f['export_wall_seconds']:.2f} s", ""),
        ("export / baseline", f"{f['ratio']:.2f}x", f"<= {t['ratio_max']}x: "
         + verdict(t["ratio_met"])),
        ("worker child peak RSS growth",
         f"{f['rss_growth_mb']:.1f} MB ({f['rss_before_mb']} -> {f['rss_after_mb']} MB)",
         f"<= {t['rss_growth_mb_max']:.0f} MB: " + verdict(t["rss_growth_met"])),
    ]  # fmt: skip
    lines = ["| measure | value | target (B6) |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


def main() -> None:
    result = run()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    m = result["machine"]
    print(f"\nB6 export_1m  {result['date']}  {result['git_sha'][:12]}  "
          f"{m['cpu_count']} CPUs, Python {m['python_version']}, {m['platform']}\n")  # fmt: skip
    print(table(result))
    print(f"\nwritten to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
