"""Analytics jobs (queue `analytics`): fold events and our own data into rollups."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from services import aggregation
from tasks.base import JobContext, job_task, periodic_task


@periodic_task("analytics.start_aggregate")
def start_aggregate() -> str | None:
    """Beat, hourly: queue an `analytics.aggregate` run unless one is already waiting."""
    job = aggregation.start_scheduled_run()
    return str(job.id) if job else None


@job_task("analytics.aggregate")
def aggregate(ctx: JobContext) -> dict[str, Any]:
    """Fold new events and recent built-in windows into rollups; with args team_id, from
    and to (an admin's request) also rebuild that window. Safe to rerun: the watermark
    moves in the same transaction as the sums, and rebuilt windows are replaced."""
    args = ctx.args
    summary = aggregation.run(
        team_id=uuid.UUID(args["team_id"]) if args.get("team_id") else None,
        start=datetime.fromisoformat(args["from"]) if args.get("from") else None,
        end=datetime.fromisoformat(args["to"]) if args.get("to") else None,
    )
    return summary.as_dict()
