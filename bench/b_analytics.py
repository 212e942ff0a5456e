"""B7 and B8: analytics ingestion over HTTP and aggregation into rollups.

B7, ingestion. The real app (`app:create_app()` under gunicorn.conf.py, production
settings, a private broker; the rate limiter on with its default limit far above what
one client sends, so every request pays for it and none is refused) receives
POST /api/v1/teams/<id>/analytics/events, each a full batch of 1,000 events
(~150 KB: name, occurred_at, three properties, a dedup id), authenticated with an API key
of scope `ingest` (how apps send events). wrk drives it; a Lua script rewrites the dedup
ids of every request (`<run>-<thread>-<request>-<i>`), so every event is new and every
insert is real. Events/s = wrk's requests/s x 1,000, checked against the rows stored.
Baseline: `COPY analytics_events (team_id, name, occurred_at, properties, dedup_id) FROM
STDIN` of COPY_BATCHES x 1,000 rows of the same shape (pre-encoded CSV, one psycopg
connection), rows/s. Target: >= 0.3x.

B8, aggregation. AGG_ROWS events (5,000,000 by default) over 20 teams, 25 names and the
last 30 days, made by one INSERT ... SELECT generate_series (deterministic: every value
derives from the row number and the current hour), then VACUUM ANALYZE. Baseline: one
`INSERT INTO <temp table> SELECT team_id, name, date_trunc('hour', occurred_at, 'UTC'),
count(*) FROM analytics_events GROUP BY 1, 2, 3` over the same rows (default settings).
Measured: `services.insights.aggregation.run()` in one transaction, as the `analytics.aggregate`
job runs it: the first run folds everything into hour and day rollups (full: <= 1.5x
baseline); then 1% more events in the last three hours (as live traffic adds them) and
the next run (incremental: <= 5% of full). The rollups are checked against the raw
events before anything is reported.

BENCH_INGEST_SECONDS and BENCH_AGG_ROWS override the run length and the row count
(development runs). The group leaves analytics_events and the rollups empty.
"""

from __future__ import annotations

import csv
import io
import json
import os
import secrets
import subprocess
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

from app import create_app
from bench.harness import (
    Context,
    Gunicorn,
    Row,
    WrkResult,
    private_broker,
    production_settings,
    say,
    wrk_binary,
)
from config import Settings
from extensions import db
from services.identity import accounts, api_keys
from services.insights import aggregation
from services.teams import teams

# B7
BATCH = 1000  # events per request: the API's maximum
CONNECTIONS = 8  # concurrent clients posting batches
WRK_THREADS = 1  # one C thread outpaces any Python server; the other core serves
WARMUP_SECONDS = 3.0
INGEST_SECONDS = float(os.environ.get("BENCH_INGEST_SECONDS", "10"))
COPY_BATCHES = 200  # baseline rows = COPY_BATCHES x BATCH
MIN_INGEST_RATIO = 0.3
UNREACHABLE_LIMIT = "1000000000/minute"
# B8
AGG_ROWS = int(os.environ.get("BENCH_AGG_ROWS", "5000000"))
AGG_TEAMS = 20
AGG_NAMES = 25
AGG_DAYS = 30
NEW_SHARE = 0.01  # the incremental run's new events, as a share of AGG_ROWS
MAX_FULL_RATIO = 1.5
MAX_INCREMENTAL_SHARE = 0.05

# wrk: every request is the same batch with its dedup ids made unique. "@@" in the
# template is replaced by "<run>-<thread>-<request>".
_WRK_SCRIPT = """
local template = io.open(os.getenv("BENCH_BODY_FILE")):read("*a")
local key = os.getenv("BENCH_API_KEY")
local path = os.getenv("BENCH_PATH")
local threads, counter, prefix = {}, 0, ""
function setup(thread)
  table.insert(threads, thread)
  thread:set("id", #threads)
end
function init(args)
  prefix = (args[1] or "run") .. "-" .. tostring(id) .. "-"
end
function request()
  counter = counter + 1
  local body = template:gsub("@@", prefix .. counter)
  return wrk.format("POST", path, {["X-API-Key"] = key,
                                   ["Content-Type"] = "application/json"}, body)
end
"""


def run(ctx: Context) -> list[Row]:
    rows: list[Row] = []
    with private_broker(ctx.work / "analytics-broker") as broker:
        settings = production_settings(ctx.base, broker.url(0),
                                       ratelimit_default=UNREACHABLE_LIMIT)  # fmt: skip
        app = create_app(settings)
        with app.app_context():
            try:
                rows += _ingest(ctx, settings)
                rows += _aggregate(ctx)
            finally:
                db.session.remove()
                _empty(ctx.libpq_url())
    return rows


def _empty(conninfo: str) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("TRUNCATE analytics_events, analytics_rollups, analytics_watermarks")


# --- B7: ingestion -------------------------------------------------------------------------


def _ingest(ctx: Context, settings: Settings) -> list[Row]:
    password = secrets.token_hex(16)
    user = accounts.create_user(f"bench-ingest-{secrets.token_hex(4)}@example.com",
                                password, "Bench", is_admin=False)  # fmt: skip
    team_id = teams.create_team(user, "Bench ingest").team.id
    key = api_keys.create_api_key(user, name="bench", scopes=["ingest"], expires_at=None,
                                  current_password=password, signed_in_at=None)  # fmt: skip
    path = f"/api/v1/teams/{team_id}/analytics/events"
    template = _batch_template(datetime.now(UTC))
    body_file = ctx.work / "ingest-body.json"
    body_file.write_text(template)

    conninfo = ctx.libpq_url()
    say(f"baseline: COPY {COPY_BATCHES * BATCH:,} events into analytics_events ...")
    copy_rows, copy_seconds = _copy_baseline(conninfo, team_id, template)
    copy_rate = copy_rows / copy_seconds
    say(f"  {copy_seconds:.2f} s, {copy_rate:,.0f} rows/s")
    _empty(conninfo)

    with Gunicorn(settings, "analytics") as web:
        _check_one(web.url + path, key.secret, template)
        env = {"BENCH_BODY_FILE": str(body_file), "BENCH_API_KEY": key.secret, "BENCH_PATH": path}
        _wrk_post(web.url, env, WARMUP_SECONDS, "warm")
        before = _count(conninfo, team_id)
        say(f"ingest: {CONNECTIONS} clients posting {BATCH}-event batches for "
            f"{INGEST_SECONDS:g} s ...")  # fmt: skip
        result = _wrk_post(web.url, env, INGEST_SECONDS, "measure")
        stored = _count(conninfo, team_id) - before
    rate = result.requests_per_second * BATCH
    say(f"  {result.requests_per_second:.1f} batches/s = {rate:,.0f} events/s, p50 "
        f"{result.p50_ms:.0f} ms, p99 {result.p99_ms:.0f} ms, {result.errors} errors")  # fmt: skip
    if result.errors or stored < result.requests * BATCH:
        raise RuntimeError(f"ingest: {result.errors} errors; {stored:,} events stored for "
                           f"{result.requests:,} batches")  # fmt: skip
    _empty(conninfo)
    ratio = rate / copy_rate
    return [
        Row("B7", f"analytics ingest over HTTP ({BATCH}-event batches, {CONNECTIONS} clients)",
            rate, "events/s", baseline=copy_rate, baseline_what="COPY into analytics_events",
            ratio=ratio, target=f">= {MIN_INGEST_RATIO}x", met=ratio >= MIN_INGEST_RATIO,
            notes=f"p50 {result.p50_ms:.0f} ms, p99 {result.p99_ms:.0f} ms per batch; "
                  f"{result.requests:,} batches, {stored:,} events stored"),
    ]  # fmt: skip


def _batch_template(now: datetime) -> str:
    """One full batch as JSON; "@@" in each dedup id is made unique per request."""
    events = [
        {
            "name": f"page.view.{i % 5}",
            "occurred_at": (now - timedelta(seconds=i)).isoformat(),
            "properties": {"path": f"/pages/{i % 50}", "referrer": "search", "ms": i},
            "dedup_id": f"@@-{i}",
        }
        for i in range(BATCH)
    ]
    return json.dumps({"events": events}, separators=(",", ":"))


def _copy_baseline(conninfo: str, team_id: uuid.UUID, template: str) -> tuple[int, float]:
    """COPY COPY_BATCHES batches' worth of the same events (encoded beforehand)."""
    events = json.loads(template)["events"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for batch in range(COPY_BATCHES):
        for event in events:
            writer.writerow((team_id, event["name"], event["occurred_at"],
                             json.dumps(event["properties"], separators=(",", ":")),
                             event["dedup_id"].replace("@@", f"copy-{batch}")))  # fmt: skip
    data = buffer.getvalue().encode()
    statement = ("COPY analytics_events (team_id, name, occurred_at, properties, dedup_id) "
                 "FROM STDIN WITH (FORMAT csv)")  # fmt: skip
    with psycopg.connect(conninfo) as conn:
        start = time.perf_counter()
        with conn.cursor() as cursor:
            with cursor.copy(statement) as copy:
                view = memoryview(data)
                for offset in range(0, len(data), 1 << 20):
                    copy.write(view[offset : offset + (1 << 20)])
            rows = cursor.rowcount
        conn.commit()
        seconds = time.perf_counter() - start
    if rows != COPY_BATCHES * BATCH:
        raise RuntimeError(f"COPY stored {rows} rows, expected {COPY_BATCHES * BATCH}")
    return rows, seconds


def _check_one(url: str, api_key: str, template: str) -> None:
    """One request by hand: the body and the key are accepted, every event stored."""
    import urllib.request

    request = urllib.request.Request(  # noqa: S310 - our own local server
        url, data=template.replace("@@", "check").encode(), method="POST",
        headers={"X-API-Key": api_key, "Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        answer = json.loads(response.read())
    if answer != {"accepted": BATCH, "duplicates": 0}:
        raise RuntimeError(f"ingest check: {answer}")


def _wrk_post(base_url: str, env: dict[str, str], seconds: float, run_id: str) -> WrkResult:
    script = Path(tempfile.mkstemp(prefix="wrk-ingest-", suffix=".lua")[1])
    script.write_text(_WRK_SCRIPT)
    command = [wrk_binary(), f"-t{WRK_THREADS}", f"-c{CONNECTIONS}", f"-d{seconds:g}s",
               "--timeout", "30s", "--latency", "-s", str(script), base_url,
               "--", run_id]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=True,  # noqa: S603
                              env={**os.environ, **env})  # fmt: skip
    finally:
        script.unlink(missing_ok=True)
    return WrkResult.parse(done.stdout)


def _count(conninfo: str, team_id: uuid.UUID) -> int:
    with psycopg.connect(conninfo) as conn:
        row = conn.execute(
            "SELECT count(*) FROM analytics_events WHERE team_id = %s", (team_id,)
        ).fetchone()
    return int(row[0]) if row else 0


# --- B8: aggregation -----------------------------------------------------------------------

_TEAM = "CAST('00000000-0000-0000-0000-' || lpad(to_hex({n}), 12, '0') AS uuid)"
# Row g: team g mod 20, name (g div 20) mod 25 (every team sends every name), some second
# of the last AGG_DAYS days (a multiplicative hash of g spreads them: ~14 events per
# team, name and hour), small properties. `ts` is the run's hour.
_FILL = f"""
    INSERT INTO analytics_events (team_id, name, occurred_at, properties)
    SELECT {_TEAM.format(n=f"1 + g %% {AGG_TEAMS}")},
           'event.' || ((g / {AGG_TEAMS}) %% {AGG_NAMES}),
           %(ts)s - make_interval(secs => (g::bigint * 2654435761) %% %(span)s),
           jsonb_build_object('i', g %% 100)
    FROM generate_series(%(first)s, %(last)s) AS g
"""  # noqa: S608 - module constants only
_TEAMS = (
    f"INSERT INTO teams (id, name) SELECT {_TEAM.format(n='t')}, 'Bench agg ' || t "  # noqa: S608
    f"FROM generate_series(1, {AGG_TEAMS}) AS t ON CONFLICT (id) DO NOTHING"
)
_BASELINE = """
    INSERT INTO bench_hours
    SELECT team_id, name, date_trunc('hour', occurred_at, 'UTC'), count(*)
    FROM analytics_events GROUP BY 1, 2, 3
"""


def _aggregate(ctx: Context) -> list[Row]:
    conninfo = ctx.libpq_url()
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(_TEAMS)
        say(f"inserting {AGG_ROWS:,} analytics events over {AGG_DAYS} days ...")
        start = time.perf_counter()
        conn.execute(_FILL, {"ts": hour, "span": AGG_DAYS * 86400, "first": 1, "last": AGG_ROWS})
        conn.execute("VACUUM ANALYZE analytics_events")
        say(f"  {time.perf_counter() - start:.1f} s")

        say("baseline: INSERT INTO <temp> SELECT ... GROUP BY team, name, hour ...")
        conn.execute("CREATE TEMP TABLE bench_hours "
                     "(team_id uuid, name text, hour timestamptz, n bigint)")  # fmt: skip
        conn.execute("SELECT count(*) FROM analytics_events")  # the same cache for both
        start = time.perf_counter()
        groups = conn.execute(_BASELINE).rowcount
        baseline = time.perf_counter() - start
        say(f"  {baseline:.2f} s, {groups:,} hour groups")

    say("aggregation, first run (everything) ...")
    full, summary = _timed_run()
    say(f"  {full:.2f} s, {summary.events:,} events")
    if summary.events != AGG_ROWS:
        raise RuntimeError(f"the first run folded {summary.events:,} events, not {AGG_ROWS:,}: "
                           "a transaction left open elsewhere holds the horizon back?")  # fmt: skip

    new = int(AGG_ROWS * NEW_SHARE)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        # Live traffic: the last three hours, a new transaction.
        conn.execute(_FILL, {"ts": hour + timedelta(hours=1), "span": 3 * 3600,
                             "first": AGG_ROWS + 1, "last": AGG_ROWS + new})  # fmt: skip
    say(f"aggregation, incremental run ({new:,} new events) ...")
    incremental, summary = _timed_run()
    say(f"  {incremental:.3f} s, {summary.events:,} events")
    if summary.events != new:
        raise RuntimeError(f"the incremental run folded {summary.events:,} events, not {new:,}")
    _check_rollups(conninfo)

    ratio, share = full / baseline, incremental / full
    return [
        Row("B8", f"aggregate {AGG_ROWS:,} events into hour + day rollups (first run)", full,
            "s", baseline=baseline, baseline_what="INSERT ... SELECT ... GROUP BY hour",
            ratio=ratio, target=f"<= {MAX_FULL_RATIO}x", met=ratio <= MAX_FULL_RATIO,
            notes=f"{groups:,} hour groups"),
        Row("B8", f"incremental run after {new:,} new events (1%)", incremental, "s",
            baseline=full, baseline_what="the first run", ratio=share,
            target=f"<= {MAX_INCREMENTAL_SHARE}x", met=share <= MAX_INCREMENTAL_SHARE),
    ]  # fmt: skip


def _timed_run() -> tuple[float, aggregation.Summary]:
    db.session.rollback()
    start = time.perf_counter()
    summary = aggregation.run()
    db.session.commit()
    return time.perf_counter() - start, summary


def _check_rollups(conninfo: str) -> None:
    """Every hour and day rollup equals a count of the raw events."""
    with psycopg.connect(conninfo) as conn:
        for interval in ("hour", "day"):
            row = conn.execute(
                """
                SELECT count(*) FROM (
                    SELECT team_id, name, date_trunc(%(i)s, occurred_at, 'UTC') AS bucket,
                           count(*) AS value
                    FROM analytics_events GROUP BY 1, 2, 3
                ) AS raw
                FULL JOIN (
                    SELECT team_id, name, bucket, value FROM analytics_rollups
                    WHERE "interval" = %(i)s AND name NOT LIKE 'builtin.%%'
                ) AS r USING (team_id, name, bucket)
                WHERE raw.value IS DISTINCT FROM r.value
                """,
                {"i": interval},
            ).fetchone()
            if row is None or row[0]:
                raise RuntimeError(f"{row[0] if row else '?'} {interval} rollups differ from "
                                   "the raw events")  # fmt: skip
