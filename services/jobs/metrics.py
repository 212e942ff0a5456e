"""Per-task counters and runtimes, kept in Redis (read by `services.ops.metrics` at scrape).

Workers are many processes on possibly many hosts, recycled by Celery; Redis hashes give
one running total for all of them, so any web process can export the whole fleet's task
metrics. Queued on the caller's Redis batch (services.core.redis_batch: the job runner
sends a claim's or a settle's Redis writes in one round trip), else one pipelined round
trip; a Redis outage loses counts, never jobs (errors are logged, not raised).
"""

from __future__ import annotations

import time
from typing import Final

from services.core import redis_batch

COUNTS_KEY: Final = "metrics:tasks"  # hash: "<outcome>|<task>" -> count
RUNTIME_KEY: Final = "metrics:task_runtime"  # hash: "<task>|<le>", "<task>|sum"
OUTCOMES: Final = ("started", "succeeded", "failed", "retried", "dead")
# Seconds; each run counts in the first bucket it fits ("+Inf" last), summed at scrape.
BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)
# When the leading beat last ticked (epoch seconds): written by the beat scheduler
# (tasks/runtime/), read by the beat-staleness metric (services/ops/).
BEAT_LAST_TICK_KEY: Final = "beat:last_tick"


def bucket_for(seconds: float) -> str:
    return next((str(le) for le in BUCKETS if seconds <= le), "+Inf")


def record(task: str, outcome: str, runtime: float | None = None) -> None:
    """Count `outcome` for `task` (and its runtime, for finished runs)."""
    # Never raises (redis_batch logs a failure): metrics must never fail or retry a job.
    with redis_batch.writes("task_metrics_failed", task=task) as pipe:
        pipe.hincrby(COUNTS_KEY, f"{outcome}|{task}", 1)
        if runtime is not None:
            pipe.hincrby(RUNTIME_KEY, f"{task}|{bucket_for(runtime)}", 1)
            pipe.hincrbyfloat(RUNTIME_KEY, f"{task}|sum", runtime)


class Stopwatch:
    """Seconds since creation (monotonic)."""

    def __init__(self) -> None:
        self._start = time.perf_counter()

    def seconds(self) -> float:
        return time.perf_counter() - self._start
