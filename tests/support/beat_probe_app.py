"""A Celery app for beat's failover test (`celery -A tests.support.beat_probe_app:celery_app`):
the real app, whose schedule is the housekeeping ticks (the relay among them) plus one
probe entry whose period is a few seconds (tests/support/beat_probe.py).

Only beats and workers the test starts import it: it builds the app from the environment.
"""

from __future__ import annotations

import json
from typing import Any

from extensions import redis
from make_celery import celery_app, flask_app
from services.jobs.context import JobContext
from services.jobs.runner import job_task
from services.jobs.schedule import BEAT_ARG
from tests.support.beat_probe import PERIOD_SECONDS, PROBE_ENTRY, PROBE_TASK, RUNS_KEY


@job_task(PROBE_TASK)
def probe(ctx: JobContext) -> dict[str, Any]:
    """Record one run of the period in args (test only)."""
    period = ctx.args[BEAT_ARG]["period"]
    redis.client.rpush(RUNS_KEY, json.dumps({"period": period, "job_id": str(ctx.job_id)}))
    return {"period": period}


# The housekeeping (relay, reaper, sealer) stays: the relay sends a probe job whose beat
# died between the commit and the publish. The hourly and daily jobs go: not under test.
celery_app.conf.beat_schedule = {
    name: spec
    for name, spec in celery_app.conf.beat_schedule.items()
    if not getattr(celery_app.tasks.get(spec["task"]), "runs_as_job", False)
} | {PROBE_ENTRY: {"task": PROBE_TASK, "schedule": PERIOD_SECONDS}}

__all__ = ["celery_app", "flask_app"]
