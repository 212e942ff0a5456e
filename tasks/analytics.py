"""Analytics jobs (queue `analytics`): fold events and our own data into rollups."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from services.insights import aggregation, aggregation_runs
from services.jobs import names
from services.jobs.context import JobContext
from services.jobs.runner import job_task, periodic_task


@periodic_task(names.ANALYTICS_START_AGGREGATE)
def start_aggregate() -> str | None:
    """Beat, hourly: queue an `analytics.aggregate` run unless one is already waiting."""
    job = aggregation_runs.start_scheduled_run()
    return str(job.id) if job else None


@job_task(names.ANALYTICS_AGGREGATE)
def aggregate(ctx: JobContext) -> dict[str, Any]:
    """Fold new events and recent built-in windows into rollups: every team's (beat), or
    only the team in args team_id (an admin's request), rebuilding the window in args from
    and to if given. Safe to rerun: watermarks move in the same transaction as the sums,
    and rebuilt windows are replaced."""
    args = ctx.args
    if not args.get("team_id"):
        return aggregation.run().as_dict()
    summary = aggregation.run_team(
        uuid.UUID(args["team_id"]),
        start=datetime.fromisoformat(args["from"]) if args.get("from") else None,
        end=datetime.fromisoformat(args["to"]) if args.get("to") else None,
    )
    return summary.as_dict()
