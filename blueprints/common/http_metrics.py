"""HTTP metrics, recorded by each web process and summed over all of gunicorn's workers.

Counting in-process costs microseconds per request (no network on the hot path). Under
gunicorn, `gunicorn.conf.py` points PROMETHEUS_MULTIPROC_DIR at a directory before the
app is imported, so prometheus_client keeps each worker's values in a memory-mapped file
there and `/metrics`, whichever worker answers, reads all of them. Without that variable
(tests, `flask run`) the values simply live in this process.
"""

from __future__ import annotations

import os
from typing import Final

from flask import Request, Response
from prometheus_client import CollectorRegistry, Counter, Histogram, multiprocess

MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
_LOCAL = CollectorRegistry(auto_describe=False)

REQUESTS = Counter(
    "maycole_http_requests",
    "HTTP requests answered, by route template and status.",
    ["method", "route", "status"],
    registry=_LOCAL,
)
LATENCY = Histogram(
    "maycole_http_request_duration_seconds",
    "Time to answer an HTTP request (streams excluded), by route template.",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=_LOCAL,
)
RATE_LIMITED = Counter(
    "maycole_rate_limit_rejections",
    "Requests refused with 429 by a rate limit, by route template.",
    ["route"],
    registry=_LOCAL,
)


def observe(request: Request, response: Response, seconds: float) -> None:
    """Count one answered request. Routes are templates (`/teams/<uuid:team_id>`), never
    raw paths, so the number of series stays bounded."""
    route = request.url_rule.rule if request.url_rule else "unmatched"
    REQUESTS.labels(request.method, route, str(response.status_code)).inc()
    if not response.is_streamed:  # an SSE stream's lifetime is not a latency
        LATENCY.labels(request.method, route).observe(seconds)
    if response.status_code == 429:
        RATE_LIMITED.labels(route).inc()


def registry() -> CollectorRegistry:
    """What /metrics exports for HTTP: every web process's values, or this process's."""
    directory = os.environ.get(MULTIPROC_ENV)
    if not directory:
        return _LOCAL
    combined = CollectorRegistry(auto_describe=False)
    multiprocess.MultiProcessCollector(combined, path=directory)  # type: ignore[no-untyped-call]
    return combined
