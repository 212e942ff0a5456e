"""B3-B5: the task queue, through the real web, broker and prefork workers.

Everything runs on a private Redis broker (nothing else consumes or pollutes it) with
production settings; workers are the production entry point (`celery -A
make_celery:celery_app worker`, prefork, concurrency 2 on this 2-CPU machine) plus
`--include bench.noop`, the bare no-op baseline task.

* B3, queue latency: POST /api/v1/admin/jobs/ping (the `maintenance.ping` probe job, no
  sleep) through gunicorn; per job, from the moment the web process handed its message
  to the broker, right after the job's commit (the timestamp of Celery's `task-sent`
  event, which production sends for Flower), to the job's `started_at`, which the
  worker stamps when it claims the job (the task body starts right after). The notes
  also give the time from the client holding the 202 to `started_at`, which is mostly
  0 (the job runs before the response has reached the client). Idle: sequential
  requests, each waiting for its job to finish. Under load: the same probe
  every 50 ms while wrk (32 connections, as B1) POSTs export requests to the same
  gunicorn; their `exports.build` jobs queue on `exports`, which in production has its
  own pool (celeryconfig: one queue per kind of work), so the measured worker consumes
  every queue but that one and the backlog is dropped afterwards.
* B4, worker throughput: N messages published with no worker running, then a worker
  started and timed from the first message taken to the last one acknowledged (Redis
  polled every 2 ms), so publishing does not count. Baseline: `bench.noop`. Measured:
  `notifications.fan_out` for a one-member team audience (what an inventory low-stock
  alert is): claim, one notification row, live event, settle; email switched off. Two
  alternating rounds of each; the best of each counts (the notes give every run).
* B5, fan-out end to end: `notify_all_users` to 10,000 active users (bulk-inserted), of
  whom every 100th keeps the default immediate email for operator notices and the rest
  switched it off (in-app only): from the enqueue's commit to the last notification row
  and the last email job done (100 emails to an SMTP sink). Baseline: 10,000 individual
  `bench.noop.delay()` calls, from the first publish until the queue is drained.

`BENCH_QUEUE="b4"` (space-separated) runs only some of the three, while working on one.
The groups are in bench/queue_latency.py (B3) and bench/queue_throughput.py (B4, B5).
"""

from __future__ import annotations

import os

import psycopg

from app import create_app
from bench.harness import Context, Row, private_broker, production_settings
from bench.queue_latency import LatencyBench
from bench.queue_throughput import ThroughputBench
from scripts.devservices import free_port
from tests.support import Mailbox

# A big limit keeps the limiter's work in the path without refusing the benchmark's load.
RATE_LIMIT = "10000000/minute"


class _Bench(LatencyBench, ThroughputBench):
    """B3 (bench/queue_latency.py), B4 and B5 (bench/queue_throughput.py), with the
    instruments of bench/queue_tools.py."""


def run(ctx: Context) -> list[Row]:
    with private_broker(ctx.work) as broker:
        mailbox = Mailbox(free_port())
        mailbox.start()
        try:
            # B3 times each message from its publication, which only Celery's task-sent
            # event tells; production leaves that event off (one broker message less per
            # enqueue), so B4/B5's publishers here pay a little more than production's.
            settings = production_settings(
                ctx.base, broker.url(0), ratelimit_default=RATE_LIMIT, smtp_url=mailbox.url,
                celery_task_sent_events=True,
            )  # fmt: skip
            app = create_app(settings)
            with app.app_context(), psycopg.connect(ctx.libpq_url(), autocommit=True) as conn:
                bench = _Bench(settings, conn, broker.url(0), mailbox)
                parts = os.environ.get("BENCH_QUEUE", "b3 b4 b5").split()  # e.g. "b4" alone
                return [row for part in parts for row in getattr(bench, part)()]
        finally:
            mailbox.stop()
