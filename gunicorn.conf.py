"""Gunicorn settings for the web process (overridable with GUNICORN_CMD_ARGS).

Sized for Server-Sent Events next to ordinary requests (GET /api/v1/events/stream):

- gthread: a stream holds one thread, blocked in a Redis XREAD (the GIL is released),
  not a whole worker process. Idle keep-alive connections wait in the worker's poller
  and hold no thread at all.
- threads = 32 per worker, of which the app lets at most EVENTS_MAX_STREAMS_PER_PROCESS
  (24) be streams; further streams get 503 + Retry-After. So 8 threads per worker always
  serve ordinary requests, however many browsers are connected. Raise both together
  (e.g. WEB_THREADS=64 with EVENTS_MAX_STREAMS_PER_PROCESS=48); an idle stream thread
  costs little memory and no CPU.
- A stream lives at most EVENTS_MAX_STREAM_SECONDS (300), so a thread is recycled every
  few minutes and a worker told to stop (deploy, max_requests) has no stream older than
  that; clients resume with Last-Event-ID, so cutting them loses nothing.
- Database: streams give their connection back before streaming, so only the other
  threads use the pool (DB_POOL_SIZE 20 per worker, kept open, above the 8 reserved
  threads; a burst beyond 20 waits up to 5 s for a connection rather than opening and
  closing overflow connections: see config.py).
"""

import gc
import ipaddress
import multiprocessing
import os
import shutil
from pathlib import Path
from typing import Any

from gunicorn.glogging import Logger
from prometheus_client import multiprocess

from config import load_settings
from logs import RedactSecrets

_settings = load_settings()  # refuses to start on unsafe settings (config.py)
# Loopback on PORT by default; deployments set BIND (e.g. 0.0.0.0:8000) behind their proxy.
# The same address development derives PUBLIC_API_URL from (config.py).
bind = _settings.web_bind
worker_class = "gthread"
workers = int(os.environ.get("WEB_CONCURRENCY", max(2, multiprocessing.cpu_count())))
# 24 streams + 8 threads for everything else (see the module docstring).
threads = int(os.environ.get("WEB_THREADS", "32"))
# gthread workers tell the arbiter they are alive from their main loop, not from request
# threads, so a 5-minute stream never trips this; it only catches a wedged worker.
timeout = 30
# On stop (SIGTERM: a deploy), workers stop accepting and in-flight requests get
# WEB_SHUTDOWN_GRACE_SECONDS (30) to finish; streams still open then are cut (their
# clients reconnect to another worker with Last-Event-ID). Ordinary requests finish well
# within it (statement timeout 30 s is the ceiling for the slowest). Keep the process
# manager's kill timeout above it (Kubernetes terminationGracePeriodSeconds).
graceful_timeout = _settings.web_shutdown_grace_seconds
# Seconds an idle client connection stays open between requests. Behind a load balancer,
# set it above the balancer's idle timeout (e.g. 65 for AWS ALB's 60) via GUNICORN_CMD_ARGS.
keepalive = 5
# Open connections per worker (streams + kept-alive + queued): far above the threads.
worker_connections = 1000
# Recycle workers now and then so slow leaks cannot accumulate.
max_requests = 10_000
max_requests_jitter = 1_000
accesslog = None  # the app logs every request as JSON, with its request id


class RedactingLogger(Logger):  # type: ignore[misc]
    """gunicorn's own logs, should they be switched on (--access-logfile), with the
    secrets some URLs carry redacted as in ours: invitation tokens in the request line,
    `token=` parameters in it and in the Referer, and the URI of "Error handling request"."""

    _redact = RedactSecrets()

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            log.addFilter(self._redact)


logger_class = RedactingLogger
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")

# Metrics: every worker writes its counters to files here (prometheus_client multiprocess
# mode) so /metrics sums all workers. Set before the app, and so prometheus_client, loads.
metrics_dir = Path(
    os.environ.setdefault(
        "PROMETHEUS_MULTIPROC_DIR", str(Path(__file__).resolve().parent / "var" / "metrics-web")
    )
)


def on_starting(server: Any) -> None:
    """Refuse a perimeter that cannot tell clients apart; a fresh master starts fresh
    metrics files (counters restarting is normal for Prometheus)."""
    _refuse_every_client_as_loopback(server)
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True, exist_ok=True)


def _refuse_every_client_as_loopback(server: Any) -> None:
    """Production bound to loopback or a unix socket has a proxy on the same host in
    front of it: unless that proxy is trusted (TRUSTED_PROXIES), every client's address
    is the proxy's, so per-address rate limits become one bucket for the world and audit
    rows all say 127.0.0.1. Checked against the addresses gunicorn will really bind
    (BIND, -b or GUNICORN_CMD_ARGS), before it binds them."""
    if _settings.app_env != "production" or _settings.trusted_proxies > 0:
        return
    if _settings.allow_direct_loopback:
        return
    local = [_describe(address) for address in server.cfg.address if _is_local(address)]
    if not local:
        return
    message = (
        f"Refusing to start: bound to {', '.join(local)} with TRUSTED_PROXIES=0, so behind "
        "a proxy on this host every client would be the proxy's address (one rate-limit "
        "bucket for everyone). Set TRUSTED_PROXIES to the number of proxies in front of "
        "the app (1 for one nginx), or ALLOW_DIRECT_LOOPBACK=true if clients really "
        "connect to this address directly."
    )
    server.log.error(message)
    raise RuntimeError(message)  # gunicorn prints it and exits with status 1


def _is_local(address: tuple[str, int] | str | int) -> bool:
    if isinstance(address, int):  # an inherited file descriptor: nothing to judge
        return False
    if isinstance(address, str):  # a unix socket: clients have no address at all
        return True
    host = address[0]
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: resolved by the system, not ours to guess
        return False


def _describe(address: tuple[str, int] | str) -> str:
    return f"unix:{address}" if isinstance(address, str) else f"{address[0]}:{address[1]}"


def post_worker_init(worker: object) -> None:
    """Hide everything the app allocated at start-up from the garbage collector.

    A worker holds a few hundred thousand long-lived objects (modules, SQLAlchemy and
    pydantic metadata); every full collection walked them all, and requests that build
    many objects (a 1,000-event analytics batch: ~20,000 dicts) trigger collections often:
    a third of the Python time of a batch went to the collector. `gc.freeze()` moves them
    to a permanent generation that collections skip; what requests allocate is collected
    as before."""
    gc.freeze()


def child_exit(server: object, worker: object) -> None:
    """Drop a dead worker's live gauges; its counters stay summed."""
    multiprocess.mark_process_dead(worker.pid)  # type: ignore[attr-defined,no-untyped-call]
