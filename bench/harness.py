"""What every benchmark shares: result rows, production settings, the processes of the
real stack (gunicorn, prefork workers, a private broker), wrk, and the report.

A benchmark module exposes `run(ctx: Context) -> list[Row]`; `bench.run` calls each one,
prints one table and writes bench/results/latest.json. Every figure is a ratio against a
baseline measured in the same run, on the same machine, so it travels between machines.
"""

from __future__ import annotations

import json
import os
import platform
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import make_url

import cli
from config import Settings, load_settings
from scripts.devservices import RedisServer, free_port
from tests.support import ROOT, Worker, settings_env, wait_for

RESULTS = ROOT / "bench" / "results" / "latest.json"
LOGS = ROOT / "var" / "bench-logs"


@dataclass(frozen=True)
class Row:
    """One benchmark line: the measure, its baseline and the target's verdict."""

    id: str  # "B1"
    what: str
    value: float
    unit: str  # "req/s", "ms", "s", "tasks/s", ...
    baseline: float | None = None  # same unit, measured in the same run
    baseline_what: str = ""
    ratio: float | None = None  # value / baseline (or as the target defines it)
    target: str = ""  # e.g. ">= 0.33x", "<= 25 ms"
    met: bool | None = None  # None: informational
    notes: str = ""
    # The same value against other baselines of the same run, e.g. {"hello": 0.03}: the
    # table shows them after the ratio, "0.52x (0.031x hello)".
    also: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Context:
    """The run's environment: base settings (DATABASE_URL/REDIS_URL from devservices), a
    scratch directory, and whatever a benchmark wants to leave for later ones."""

    base: Settings
    work: Path
    shared: dict[str, Any] = field(default_factory=dict)

    @property
    def database_url(self) -> str:
        return self.base.database_url

    def libpq_url(self) -> str:
        """The database URL as a plain postgresql:// URL for psycopg/psql."""
        url = make_url(self.base.database_url).set(drivername="postgresql")
        return url.render_as_string(hide_password=False)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def production_settings(base: Settings, broker_url: str, **overrides: Any) -> Settings:
    """Production settings with fresh strong secrets (and metrics token), on the given broker."""
    values: dict[str, Any] = {
        "database_url": base.database_url,
        "redis_url": base.redis_url,
        "app_env": "production",
        "secret_key": secrets.token_hex(32),
        "jwt_secret_key": secrets.token_hex(32),
        "audit_keys": f"bench:{secrets.token_hex(32)}",
        "metrics_token": secrets.token_hex(32),
        "public_api_url": "http://127.0.0.1:8000",  # required in production; links unused here
        # wrk and the load scripts connect straight to gunicorn on loopback, no proxy.
        "allow_direct_loopback": True,
        "celery_broker_url": broker_url,
        "log_level": "WARNING",  # logging every request would measure the log writer
    }
    return load_settings(**(values | overrides))


def rebuild_schema(database_url: str) -> None:
    """Drop and re-migrate the benchmark database (refuses anything not named *_bench)."""
    name = make_url(database_url).database or ""
    if not name.endswith("_bench"):
        raise SystemExit(f"refusing to drop the schema of {name!r}: not a *_bench database")
    cli.rebuild_schema(database_url)


@contextmanager
def private_broker(work: Path) -> Iterator[RedisServer]:
    """A throwaway Redis as the broker, so nothing else consumes or pollutes it."""
    server = RedisServer(free_port(), work)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class Gunicorn:
    """The Procfile's web process (gunicorn.conf.py), or any WSGI app with the same config."""

    def __init__(self, settings: Settings, name: str, app: str = "app:create_app()") -> None:
        self.settings, self.name, self.app = settings, name, app
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log = LOGS / f"web-{name}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Gunicorn:
        LOGS.mkdir(parents=True, exist_ok=True)
        env = settings_env(self.settings)
        env |= {
            "BIND": f"127.0.0.1:{self.port}",
            "PROMETHEUS_MULTIPROC_DIR": str(LOGS / f"metrics-{self.name}-{self.port}"),
            # No worker recycling (max_requests, 10,000 +- 1,000) inside a measurement: a fast
            # route (hello-world at 3,000 req/s) would restart each worker every few seconds,
            # paying the restart and moving its connections to the other worker; a slow one
            # never does, so the ratios would mix two different servers.
            "GUNICORN_CMD_ARGS": f"{env.get('GUNICORN_CMD_ARGS', '')} --max-requests 0".strip(),
        }
        command = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", self.app]
        self.process = subprocess.Popen(  # noqa: S603 - our own command line
            command, cwd=ROOT, env=env, stdout=self.log.open("wb"), stderr=subprocess.STDOUT
        )
        wait_for(self._up, 60, lambda: self.log.read_text(errors="replace")[-2000:])
        return self

    def _up(self) -> bool:
        import urllib.request

        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"gunicorn {self.name} exited: {self.log}")
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as response:  # noqa: S310
                return bool(response.status == 200)
        except OSError:
            return False

    def __exit__(self, *exc: object) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()


@contextmanager
def worker(settings: Settings, name: str, concurrency: int = 2) -> Iterator[Worker]:
    """A real prefork `celery worker` on these settings, consuming every queue."""
    process = Worker(settings, LOGS / f"worker-{name}.log", concurrency=concurrency)
    process.start(timeout=60)
    try:
        yield process
    finally:
        process.stop(timeout=30)


@dataclass(frozen=True)
class WrkResult:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int  # non-2xx/3xx answers plus socket errors
    # wrk's connections on each gunicorn worker, seen mid-run (busiest first), if looked at
    split: tuple[int, ...] = ()
    # The server's CPU time per request over the measurement (ms), if looked at
    cpu_ms: float | None = None

    @classmethod
    def parse(cls, output: str) -> WrkResult:
        def number(pattern: str) -> float:
            match = re.search(pattern, output)
            return float(match.group(1)) if match else 0.0

        def latency(pct: str) -> float:
            match = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
            if match is None:
                return 0.0
            scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[match.group(2)]
            return float(match.group(1)) * scale

        errors = number(r"Non-2xx or 3xx responses:\s+(\d+)")
        socket = re.search(
            r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
        )
        if socket:
            errors += sum(int(g) for g in socket.groups())
        return cls(
            requests_per_second=number(r"Requests/sec:\s+([\d.]+)"),
            p50_ms=latency("50"),
            p99_ms=latency("99"),
            requests=int(number(r"(\d+) requests in")),
            errors=int(errors),
        )


def connections_per_worker(port: int) -> tuple[int, ...]:
    """Established connections on each worker of the gunicorn listening on `port`, busiest
    first (workers without any count as 0); () where the system does not say.

    gthread workers share one listening socket, and each keeps the keep-alive connections
    it accepted: wrk's connections, all opened at once, may fall 16/16 or 32/0 on two
    workers, and one worker (one GIL) serves about half of what two do."""
    import psutil

    master = _gunicorn_master(port)
    try:
        workers = master.children() if master else []
        counts = {
            worker.pid: sum(1 for c in worker.net_connections("tcp")
                            if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port)
            for worker in workers
        }  # fmt: skip
    except psutil.Error:
        return ()
    return tuple(sorted(counts.values(), reverse=True))


def server_cpu_seconds(port: int) -> float | None:
    """CPU time (user + system) used so far by the gunicorn listening on `port`, master
    and workers; None where the system does not say. Sampled around a measurement, over
    its requests: the web tier's CPU per request (RESULTS.md's method)."""
    import psutil

    master = _gunicorn_master(port)
    if master is None:
        return None
    try:
        processes = [master, *master.children()]
        return float(sum(p.cpu_times().user + p.cpu_times().system for p in processes))
    except psutil.Error:
        return None


def _gunicorn_master(port: int) -> Any:
    """The psutil.Process of the gunicorn master listening on `port`, or None."""
    import psutil

    try:
        # The socket is listed once, under the master or any one worker (they share it).
        listening = [
            c.pid
            for c in psutil.net_connections("tcp")
            if c.pid and c.status == psutil.CONN_LISTEN and c.laddr.port == port
        ]
        if not listening:
            return None
        process = psutil.Process(listening[0])
        return process if process.children() else process.parent()
    except psutil.Error:
        return None


def wrk_binary() -> str:
    """wrk, installed from the system packages if it is missing (Debian/Ubuntu)."""
    found = shutil.which("wrk")
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt:
        sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
        say("installing wrk (apt-get install wrk) ...")
        subprocess.run([*sudo, apt, "install", "-y", "-q", "wrk"], check=False,  # noqa: S603
                       stdout=subprocess.DEVNULL)  # fmt: skip
        found = shutil.which("wrk")
    if not found:
        raise SystemExit("wrk is needed: install it (apt-get install wrk / brew install wrk)")
    return found


def wrk(
    url: str,
    *,
    connections: int = 32,
    seconds: float = 10,
    threads: int = 2,
    method: str = "GET",
    body: str | None = None,
    headers: dict[str, str] | None = None,
) -> WrkResult:
    """Load `url` with wrk; every request identical (a Lua script sets method/body/headers)."""
    script = Path(tempfile.mkstemp(prefix="wrk-", suffix=".lua")[1])
    lines = [f"wrk.method = {json.dumps(method)}"]
    if body is not None:
        lines.append(f"wrk.body = {json.dumps(body)}")
    for name, value in (headers or {}).items():
        lines.append(f"wrk.headers[{json.dumps(name)}] = {json.dumps(value)}")
    script.write_text("\n".join(lines) + "\n")
    command = [wrk_binary(), f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s",
               "--latency", "-s", str(script), url]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=True)  # noqa: S603
    finally:
        script.unlink(missing_ok=True)
    return WrkResult.parse(done.stdout)


def git_sha() -> str:
    git = shutil.which("git")
    if git is None:
        return "unknown"
    done = subprocess.run([git, "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,  # noqa: S603
                          text=True, check=False)  # fmt: skip
    return done.stdout.strip() or "unknown"


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
    }


def table(rows: Sequence[Row]) -> str:
    """The rows as a Markdown table (printed, and pasted into RESULTS.md); a row's `also`
    ratios follow its ratio in parentheses."""

    def fmt(value: float | None) -> str:
        if value is None:
            return ""
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.3g}"

    lines = [
        "| # | what | value | baseline | ratio | target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        verdict = {True: "yes", False: "**no**", None: ""}[row.met]
        baseline = f"{fmt(row.baseline)} {row.unit} ({row.baseline_what})" if row.baseline else ""
        ratio = f"{fmt(row.ratio)}x" if row.ratio is not None else ""
        if row.also:
            others = ", ".join(f"{fmt(value)}x {name}" for name, value in row.also.items())
            ratio = f"{ratio} ({others})" if ratio else others
        lines.append(
            f"| {row.id} | {row.what} | {fmt(row.value)} {row.unit} | {baseline} | "
            f"{ratio} | {row.target} | {verdict} |"
        )
    return "\n".join(lines)


def write_results(rows: Sequence[Row], seconds: float, extra: dict[str, Any] | None = None) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_sha": git_sha(),
        "machine": machine(),
        "seconds": round(seconds, 1),
        "rows": [row.as_dict() for row in rows],
        **(extra or {}),
    }
    RESULTS.write_text(json.dumps(document, indent=2) + "\n")
