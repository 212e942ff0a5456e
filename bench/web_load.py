"""One wrk measurement of a web route, as the web benchmarks (b_http) take it: one checked
request, a warm-up, then the measurement, taken again when wrk's connections fell unevenly
on the gunicorn workers, with the server's CPU per request sampled around it."""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

from bench.harness import (
    WrkResult,
    connections_per_worker,
    say,
    server_cpu_seconds,
    wrk,
    wrk_binary,
)

CONNECTIONS = 32
WARMUP_SECONDS = 2.0
MEASURE_SECONDS = 10.0
WRK_THREADS = 1
# At most this share of wrk's connections on one gunicorn worker, else measure again.
BALANCED_SHARE = 0.75
MEASURE_ATTEMPTS = 3


@dataclass(frozen=True)
class Load:
    """One wrk measurement: requests to `paths` of `base_url` (rotating if several)."""

    name: str
    base_url: str
    paths: list[str]
    method: str = "GET"
    body: str | None = None
    headers: dict[str, str] | None = None
    expect: int = 200
    connections: int = CONNECTIONS


def fewer(load: Load, connections: int) -> Load:
    return Load(f"{load.name}, {connections} connections", load.base_url, load.paths,
                load.method, load.body, load.headers, load.expect, connections)  # fmt: skip


def measure(
    load: Load, around: Callable[[], AbstractContextManager[object]] | None = None
) -> WrkResult:
    """Check one request answers `load.expect`, warm up, then measure (inside `around()`).

    A measurement whose busiest gunicorn worker held more than BALANCED_SHARE of wrk's
    connections (seen mid-run) is taken again, up to MEASURE_ATTEMPTS times; the most
    even one counts. Which worker accepts which of the connections wrk opens at once is
    chance, and a worker keeps its keep-alive connections: at 32/0 one process (one GIL)
    serves what two serve at 16/16, about half as fast (harness.connections_per_worker).
    """
    _check(load)
    _wrk(load, WARMUP_SECONDS)
    port = urlsplit(load.base_url).port or 80
    chosen: WrkResult | None = None
    for _ in range(MEASURE_ATTEMPTS):
        with around() if around else nullcontext(), ThreadPoolExecutor(1) as pool:
            cpu_before = server_cpu_seconds(port)
            running = pool.submit(_wrk, load, MEASURE_SECONDS)
            time.sleep(MEASURE_SECONDS / 2)
            split = connections_per_worker(port)  # mid-run, while wrk's connections are open
            result = replace(running.result(), split=split)
            cpu_after = server_cpu_seconds(port)
        if cpu_before is not None and cpu_after is not None and result.requests:
            result = replace(result, cpu_ms=(cpu_after - cpu_before) * 1000 / result.requests)
        if chosen is None or _busiest_share(result) < _busiest_share(chosen):
            chosen = result
        if _busiest_share(result) <= BALANCED_SHARE:
            break
        say(f"  {load.name}: connections per worker {_split(result)}, measuring again")
    assert chosen is not None
    say(f"  {load.name}: {chosen.requests_per_second:,.0f} req/s, {notes(chosen)}, "
        f"{chosen.requests:,} requests")  # fmt: skip
    return chosen


def _busiest_share(result: WrkResult) -> float:
    """The share of wrk's connections on the busiest worker (0 when unknown or one worker)."""
    if len(result.split) < 2 or not sum(result.split):
        return 0.0
    return result.split[0] / sum(result.split)


def _split(result: WrkResult) -> str:
    return "/".join(str(n) for n in result.split) if result.split else "unknown"


def _wrk(load: Load, seconds: float) -> WrkResult:
    if len(load.paths) == 1:
        return wrk(load.base_url + load.paths[0], seconds=seconds, connections=load.connections,
                   threads=WRK_THREADS, method=load.method, body=load.body,
                   headers=load.headers)  # fmt: skip
    return _wrk_rotating(load, seconds)


def _wrk_rotating(load: Load, seconds: float) -> WrkResult:
    """harness.wrk, but each request takes the next of `load.paths` (a wrk `request()`)."""
    lines = [f"wrk.method = {json.dumps(load.method)}"]
    if load.body is not None:
        lines.append(f"wrk.body = {json.dumps(load.body)}")
    for name, value in (load.headers or {}).items():
        lines.append(f"wrk.headers[{json.dumps(name)}] = {json.dumps(value)}")
    lines += [
        f"local paths = {{{', '.join(json.dumps(p) for p in load.paths)}}}",
        "local i = 0",
        "request = function()",
        "  i = i % #paths + 1",
        "  return wrk.format(nil, paths[i])",
        "end",
    ]
    with tempfile.TemporaryDirectory(prefix="wrk-") as tmp:
        script = Path(tmp) / "rotate.lua"
        script.write_text("\n".join(lines) + "\n")
        command = [wrk_binary(), f"-t{WRK_THREADS}", f"-c{load.connections}", f"-d{seconds:g}s",
                   "--latency", "-s", str(script), load.base_url + load.paths[0]]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, check=True)  # noqa: S603
    return WrkResult.parse(done.stdout)


def _check(load: Load) -> None:
    url = load.base_url + load.paths[0]
    data = load.body.encode() if load.body is not None else None
    request = urllib.request.Request(url, data=data, method=load.method, headers=load.headers or {})  # noqa: S310  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            status, text = response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read().decode(errors="replace")
    if status != load.expect:
        raise RuntimeError(f"{load.method} {url}: {status} (expected {load.expect}): {text[:500]}")


def notes(result: WrkResult) -> str:
    text = f"p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms"
    if result.cpu_ms is not None:
        text += f", web CPU {result.cpu_ms:.2f} ms/request"
    if result.split:
        text += f", connections per worker {_split(result)}"
    return text + (f"; {result.errors} errors" if result.errors else "")
