"""B1, B2 and B9: what the web tier serves per second, against the least that a route of
the same kind costs on this stack (B0-write, B0-read), and against a bare hello-world.

Why B0: hello-world is a poor yardstick for routes that talk to PostgreSQL and Redis. On a
shared machine those slow down differently from pure Python, and no route that
authenticates and touches the database can come near a route that does nothing. So each
web row is measured against its B0 (bench/b0.py), a plain Flask app doing only what its
kind of route cannot skip, served by the same gunicorn configuration in the same run;
the ratio to hello-world stays on every web row as a second ratio (`Row.also`).

Six gunicorn servers, one after the other (two apps' connection pools at once come close
to PostgreSQL's max_connections), all with the real gunicorn.conf.py and the same
environment (so the same workers and threads: WEB_CONCURRENCY, WEB_THREADS or the
config's defaults), on production settings, the run's PostgreSQL and Redis, and a
private broker that no worker consumes (so B1 measures only the accept path: validate,
write, publish):

* `bench.hello:app` GET /hello, a bare Flask route;
* B0-write, `bench.b0:create_write_app()` POST /b0/teams/<id>/exports: decode the HS256
  token, one Redis round trip (the limiter's fixed-window script), INSERT one `jobs` row
  and commit through psycopg, publish its Celery message; 202;
* B0-read, `bench.b0:create_read_app()` GET /b0/jobs/<id>: decode the token, the same
  round trip, one SELECT by primary key, JSON out;
* the app (`app:create_app()`) with the rate limiter on and its default limit raised far
  above what one client can send (RATELIMIT_DEFAULT), so every request still pays for
  the limiter (key from the token, a Redis round trip) but none is refused; B1 on one
  server, B2 on a second, fresh one (after B1's POSTs, wrk's connections kept falling
  32/0 on one worker of the first);
* `bench.app_noauth`: the same app with RATELIMIT_ENABLED=false plus one bench-only
  route, GET /api/v1/jobs/<id> without its auth guard (why: see that module).

Every measurement: one checked request, a WARMUP_SECONDS wrk run, then MEASURE_SECONDS of
wrk with CONNECTIONS connections (P99_CONNECTIONS for the latency target; one wrk thread:
it outruns any Python server and leaves the other core to the servers, PostgreSQL and
Redis), taken again (up to MEASURE_ATTEMPTS times) when one gunicorn worker held more
than BALANCED_SHARE of wrk's connections: which worker accepts a connection is chance,
and 32/0 on two workers serves about half of 16/16 (see `bench.web_load.measure`). The
notes give each measurement's split. Rows, each target a ratio from this one run:

* B0: B0-write (also at P99_CONNECTIONS), B0-read and hello-world themselves, each
  against hello-world (informational);
* B1: POST /api/v1/teams/<id>/exports (a payments export with filters: validation, the
  membership check, export + job + audit rows in one transaction, the outbox publish)
  by one user, rotating over POST_TEAMS of their teams as a population of teams would
  (B0-write rotates over the same teams), req/s vs B0-write (>= 0.5x, stretch 0.75x);
  its p99 at P99_CONNECTIONS vs B0-write's p99 there (<= 3x). Informational: the p99 at
  CONNECTIONS, and the same POST to one team only. Each team's audit trail is a hash
  chain whose appends are serialised (an advisory lock held until commit), so one team's
  writes queue on that lock: a per-team ceiling, not the accept path's cost;
* B2: GET /api/v1/teams/<id>/dashboard (warm cache; Redis's hit/miss counters are read
  around the run to prove it) and GET /api/v1/jobs/<id>, req/s vs B0-read (>= 0.6x each);
* B9: GET /api/v1/jobs/<id> with limiter and auth vs the bench route with neither (at
  most 20% slower), and, for the profile, each one's share separately and the route
  with neither vs B0-read (informational).
* CPU: the web processes' CPU per request (gunicorn master and workers, user + system,
  sampled around each measurement) for B1's POST, B2's two reads and the app's own
  /healthz on the same server; POST <= 4x /healthz's, the reads <= 2x. Each row also
  shows the ratio to its B0's CPU, and two informational rows give B0-write's and
  B0-read's own CPU against the same /healthz: the floor that no implementation of the
  route goes below (B0-write read 4.8x and B0-read 2.2x on 2026-12-07, above the 4x and
  2x targets).

B0-write's job rows are cancelled afterwards (they have no export and are never consumed).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
import redis as redis_lib

from app import create_app
from bench import b0
from bench.app_noauth import APP as NOAUTH_APP
from bench.app_noauth import BENCH_USER_HEADER, NOAUTH_JOB_PATH
from bench.harness import (
    Context,
    Gunicorn,
    Row,
    WrkResult,
    private_broker,
    production_settings,
)
from bench.web_load import CONNECTIONS, MEASURE_SECONDS, Load, fewer, measure, notes
from config import Settings
from extensions import db
from services.files import exports
from services.identity import accounts, sessions
from services.insights.dashboard import HITS_KEY, MISSES_KEY
from services.teams import teams

POST_TEAMS = 64  # B1's requests rotate over this many teams of the user
# The default limit (per user) one client at full speed never reaches in a minute; the
# limiter still counts every request.
UNREACHABLE_LIMIT = "1000000000/minute"
# A realistic export request: validated resource, format and filters.
EXPORT_BODY = json.dumps(
    {
        "resource": "payments",
        "format": "csv",
        "filters": {"from": "2025-01-01T00:00:00Z", "status": "succeeded"},
    }
)

# Targets (issue "hot path"), ratios to the B0 baselines of the same run.
B1_MIN_RATIO = 0.5  # B1 req/s vs B0-write
B1_STRETCH_RATIO = 0.75
B1_MAX_P99_RATIO = 3.0  # B1 p99 vs B0-write p99, both at P99_CONNECTIONS
B2_MIN_RATIO = 0.6  # B2 req/s vs B0-read
B9_MAX_SLOWDOWN = 0.20
# Web CPU per request against /healthz's on the same server: export POST, reads.
CPU_MAX_POST = 4.0
CPU_MAX_READ = 2.0
P99_CONNECTIONS = 8  # B1's latency target is measured at this load (and B0-write's, hello's)


@dataclass(frozen=True)
class Seed:
    user_id: uuid.UUID
    team_ids: list[uuid.UUID]  # the first one also has the dashboard and the job
    job_id: uuid.UUID
    token: str  # an access token of a real session (carries `sid`, like a login's)


def run(ctx: Context) -> list[Row]:
    with private_broker(ctx.work) as broker:
        on = production_settings(ctx.base, broker.url(0), ratelimit_default=UNREACHABLE_LIMIT)
        # Same secrets (the token works on both servers); only the limiter switched off.
        off = production_settings(
            ctx.base,
            broker.url(0),
            secret_key=on.secret_key,
            jwt_secret_key=on.jwt_secret_key,
            ratelimit_enabled=False,
        )
        seed = _seed(on)
        # One server at a time: two apps' connection pools at once (2 x 20 per worker
        # process at full load) come close to PostgreSQL's max_connections (100).
        servers = {
            "hello": Gunicorn(on, "http-hello", app="bench.hello:app"),
            "b0-write": Gunicorn(on, "http-b0-write", app=b0.WRITE_APP),
            "b0-read": Gunicorn(on, "http-b0-read", app=b0.READ_APP),
            "web": Gunicorn(on, "http-app"),
            # B2 on a fresh app server: after B1's POSTs, wrk's connections fell 32/0 on one
            # worker in every attempt (2026-12-07), which halves what B2 measures.
            "web-reads": Gunicorn(on, "http-app-reads"),
            "noauth": Gunicorn(off, "http-noauth", app=NOAUTH_APP),
        }
        try:
            return _measure(on, seed, servers)
        finally:
            _cancel_b0_jobs(on)


def _seed(settings: Settings) -> Seed:
    """A user owning POST_TEAMS teams, a session, and one queued job (via the services)."""
    app = create_app(settings)
    with app.app_context():
        user = accounts.create_user(
            f"bench-http-{uuid.uuid4().hex[:8]}@example.com", uuid.uuid4().hex, "Bench HTTP",
            is_admin=False,
        )  # fmt: skip
        team_ids = [teams.create_team(user, f"Bench {i}").team.id for i in range(POST_TEAMS)]
        pair = sessions.open_session(user, ip="127.0.0.1", user_agent="wrk")
        db.session.commit()
        membership = teams.load_membership(user, team_ids[0], "exports.create")
        _, job = exports.create_export(
            user, membership, resource="members", format_="csv", filters={}
        )
        seed = Seed(user.id, team_ids, job.id, pair.access_token)
        db.session.remove()
    return seed


def _measure(settings: Settings, seed: Seed, servers: dict[str, Gunicorn]) -> list[Row]:
    bearer = {"Authorization": f"Bearer {seed.token}"}
    team = seed.team_ids[0]
    job_path = f"/api/v1/jobs/{seed.job_id}"
    post_headers = bearer | {"Content-Type": "application/json"}
    few = P99_CONNECTIONS

    with servers["hello"] as hello:
        base = measure(Load("hello", hello.url, ["/hello"]))
        base_few = measure(Load(f"hello, {few} connections", hello.url, ["/hello"],
                              connections=few))  # fmt: skip

    with servers["b0-write"] as server:
        paths = [b0.WRITE_PATH.format(team_id=t) for t in seed.team_ids]
        write_load = Load("B0-write", server.url, paths, "POST", EXPORT_BODY, post_headers, 202)
        write = measure(write_load)
        write_few = measure(fewer(write_load, few))

    with servers["b0-read"] as server:
        read = measure(Load("B0-read", server.url, [b0.READ_PATH.format(job_id=seed.job_id)],
                          headers=bearer))  # fmt: skip

    with servers["web"] as web:

        def post(name: str, team_ids: list[uuid.UUID], connections: int) -> WrkResult:
            paths = [f"/api/v1/teams/{t}/exports" for t in team_ids]
            return measure(Load(name, web.url, paths, "POST", EXPORT_BODY, post_headers, 202,
                              connections))  # fmt: skip

        many = post("B1 POST exports, rotating teams", seed.team_ids, CONNECTIONS)
        many_few = post(f"B1 POST exports, rotating teams, {few} connections", seed.team_ids,
                        few)  # fmt: skip
        one = post("B1 POST exports, one team", [team], CONNECTIONS)

    with servers["web-reads"] as web:
        cache: dict[str, int] = {}
        dashboard_path = f"/api/v1/teams/{team}/dashboard"
        board = measure(Load("B2 dashboard", web.url, [dashboard_path], headers=bearer),
                      around=lambda: _cache_counters(settings, cache))  # fmt: skip
        job = measure(Load("B2 job status (limiter+auth)", web.url, [job_path], headers=bearer))
        health = measure(Load("/healthz (the app)", web.url, ["/healthz"]))

    with servers["noauth"] as noauth:
        auth_only = measure(Load("B9 job status (auth, no limiter)", noauth.url, [job_path],
                               headers=bearer))  # fmt: skip
        bare = measure(Load("B9 job status (no limiter, no auth)", noauth.url,
                          [f"{NOAUTH_JOB_PATH}/{seed.job_id}"],
                          headers={BENCH_USER_HEADER: str(seed.user_id)}))  # fmt: skip

    def rps(result: WrkResult, *others: tuple[str, WrkResult]) -> dict[str, float]:
        """`result`'s req/s against other baselines (B0-x, hello), for a row's `also`."""
        return {name: _ratio(result.requests_per_second, other.requests_per_second)
                for name, other in others}  # fmt: skip

    hello_rps = ("hello", base)
    hello_what = "hello-world, same gunicorn"
    b1_ratio = _ratio(many.requests_per_second, write.requests_per_second)
    b1_p99_ratio = _ratio(many_few.p99_ms, write_few.p99_ms)
    stretch = "met" if b1_ratio >= B1_STRETCH_RATIO else "not met"
    rows = [
        Row("B0", "B0-write: POST job (JWT, limiter script, INSERT + commit, publish) req/s",
            write.requests_per_second, "req/s", base.requests_per_second, hello_what,
            _ratio(write.requests_per_second, base.requests_per_second), "", None,
            f"{POST_TEAMS} teams in turn; {notes(write)}; at {few} connections "
            f"{write_few.requests_per_second:,.0f} req/s, {notes(write_few)}"),
        Row("B0", "B0-read: GET job (JWT, limiter script, SELECT by id, JSON) req/s",
            read.requests_per_second, "req/s", base.requests_per_second, hello_what,
            _ratio(read.requests_per_second, base.requests_per_second), "", None, notes(read)),
        Row("B0", "hello-world GET req/s (bare Flask route)", base.requests_per_second,
            "req/s", notes=f"{notes(base)}; at {few} connections "
            f"{base_few.requests_per_second:,.0f} req/s, {notes(base_few)}"),
        Row("B1", "POST export (validate, write job, publish) req/s", many.requests_per_second,
            "req/s", write.requests_per_second, "B0-write", b1_ratio,
            f">= {B1_MIN_RATIO}x (stretch {B1_STRETCH_RATIO}x)",
            b1_ratio >= B1_MIN_RATIO and not many.errors,
            f"stretch {stretch}; {POST_TEAMS} teams in turn; {notes(many)}",
            rps(many, hello_rps)),
        Row("B1", f"POST export p99 at {few} connections", many_few.p99_ms, "ms",
            write_few.p99_ms, f"B0-write p99, {few} conn.", b1_p99_ratio,
            f"<= {B1_MAX_P99_RATIO:g}x", b1_p99_ratio <= B1_MAX_P99_RATIO and not many_few.errors,
            f"{many_few.requests_per_second:,.0f} req/s; {notes(many_few)}",
            {"hello": _ratio(many_few.p99_ms, base_few.p99_ms)}),
        Row("B1", f"POST export p99 at {CONNECTIONS} connections", many.p99_ms, "ms",
            write.p99_ms, f"B0-write p99, {CONNECTIONS} conn.", _ratio(many.p99_ms, write.p99_ms),
            "", None, f"p50 {many.p50_ms:.1f} ms", {"hello": _ratio(many.p99_ms, base.p99_ms)}),
        Row("B1", "  the same POST to one team only req/s", one.requests_per_second, "req/s",
            many.requests_per_second, f"{POST_TEAMS} teams",
            _ratio(one.requests_per_second, many.requests_per_second), "", None,
            f"its audit chain's lock serialises the team's writes; {notes(one)}",
            rps(one, ("B0-write", write), hello_rps)),
    ]  # fmt: skip
    cache_note = f"; cache hits {cache.get('hits')}, misses {cache.get('misses')}"
    for what, result, extra in (
        ("dashboard GET, warm cache", board, cache_note),
        ("job status GET", job, ""),
    ):
        ratio = _ratio(result.requests_per_second, read.requests_per_second)
        rows.append(Row("B2", f"{what} req/s", result.requests_per_second, "req/s",
                        read.requests_per_second, "B0-read", ratio, f">= {B2_MIN_RATIO}x",
                        ratio >= B2_MIN_RATIO and not result.errors,
                        notes(result) + extra, rps(result, hello_rps)))  # fmt: skip
    for what, result, limit, least in (
        ("POST export", many, CPU_MAX_POST, ("B0-write", write)),
        ("job status GET", job, CPU_MAX_READ, ("B0-read", read)),
        ("dashboard GET, warm cache", board, CPU_MAX_READ, ("B0-read", read)),
    ):
        rows.append(_cpu_row(what, result, health, limit, least))
    # The floor under the CPU targets: what the least route of each kind costs against the
    # same /healthz. A target below its B0's own ratio is one no implementation can meet.
    for what, result in (("B0-write", write), ("B0-read", read)):
        rows.append(_cpu_row(f"{what} itself", result, health, None))
    b0_read = ("B0-read", read)
    rows.append(_overhead("B9", "job status GET, limiter + auth", job, bare,
                          "no limiter, no auth", rps(job, b0_read, hello_rps),
                          met_target=True))  # fmt: skip
    rows.append(_overhead("B9", "  of which the rate limiter", job, auth_only,
                          "auth, no limiter", rps(job, b0_read, hello_rps),
                          met_target=False))  # fmt: skip
    rows.append(_overhead("B9", "  of which auth", auth_only, bare, "neither",
                          rps(auth_only, b0_read, hello_rps), met_target=False))  # fmt: skip
    rows.append(Row("B9", "  the route with neither req/s", bare.requests_per_second, "req/s",
                    read.requests_per_second, "B0-read",
                    _ratio(bare.requests_per_second, read.requests_per_second), "", None,
                    f"B0-read does auth and the limiter's round trip too; {notes(bare)}",
                    rps(bare, hello_rps)))  # fmt: skip
    return rows


def _cpu_row(
    what: str, result: WrkResult, health: WrkResult, limit: float | None,
    least: tuple[str, WrkResult] | None = None,
) -> Row:  # fmt: skip
    """The web processes' CPU per request (RESULTS.md's method) against /healthz's, and
    against `least`'s (its B0, served by the same gunicorn configuration) when given.
    Without `limit` the row is informational."""
    value, base = result.cpu_ms or 0.0, health.cpu_ms or 0.0
    ratio = _ratio(value, base)
    known = result.cpu_ms is not None and health.cpu_ms is not None
    also = {}
    if least is not None and least[1].cpu_ms:
        also[f"{least[0]}'s CPU"] = _ratio(value, least[1].cpu_ms)
    return Row("CPU", f"web CPU per request: {what}", value, "ms", base,
               "/healthz, same app and gunicorn", ratio,
               f"<= {limit:g}x" if limit is not None else "",
               (ratio <= limit) if known and limit is not None else None,
               f"gunicorn master + workers, user + system, over the {MEASURE_SECONDS:g}-s "
               f"measurement at {result.requests_per_second:,.0f} req/s", also)  # fmt: skip


def _ratio(value: float, baseline: float) -> float:
    return value / baseline if baseline else 0.0


def _cancel_b0_jobs(settings: Settings) -> None:
    """B0-write's job rows were never meant to run: cancel them, as a real cancel would,
    so no later benchmark (or a relay) finds thousands of queued exports without export."""
    with psycopg.connect(b0.libpq_url(settings.database_url), autocommit=True) as conn:
        conn.execute(
            "UPDATE jobs SET status = 'cancelled', finished_at = now() "
            "WHERE status = 'queued' AND request_id LIKE %s",
            (b0.REQUEST_ID_PREFIX + "%",),
        )


def _overhead(
    id_: str, what: str, with_: WrkResult, without: WrkResult, baseline_what: str,
    also: dict[str, float], *, met_target: bool,
) -> Row:  # fmt: skip
    """Throughput with a layer vs without it; the target is on the slowdown."""
    ratio = _ratio(with_.requests_per_second, without.requests_per_second)
    slowdown = 1 - ratio
    return Row(
        id_, f"{what} req/s", with_.requests_per_second, "req/s",
        without.requests_per_second, baseline_what, ratio,
        f">= {1 - B9_MAX_SLOWDOWN:.2f}x (<= {B9_MAX_SLOWDOWN:.0%} slower)" if met_target else "",
        (slowdown <= B9_MAX_SLOWDOWN and not with_.errors and not without.errors)
        if met_target else None,
        f"{slowdown:.1%} slower; p50 {with_.p50_ms:.2f} vs {without.p50_ms:.2f} ms"
        + (f"; {with_.errors + without.errors} errors" if with_.errors or without.errors else ""),
        also,
    )  # fmt: skip


@contextmanager
def _cache_counters(settings: Settings, counts: dict[str, int]) -> Iterator[None]:
    """Put the dashboard cache's hit/miss counts over the block in `counts` (warm: no misses)."""
    client = redis_lib.Redis.from_url(settings.redis_url)

    def read() -> tuple[int, int]:
        hits, misses = client.mget(HITS_KEY, MISSES_KEY)  # type: ignore[misc]
        return int(hits or 0), int(misses or 0)

    try:
        hits0, misses0 = read()
        yield
        hits1, misses1 = read()
        counts.update(hits=hits1 - hits0, misses=misses1 - misses0)
    finally:
        client.close()
