"""HTTP for analytics: event batches from apps and API keys, metric series, on-demand runs."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar, cast

from apiflask import APIBlueprint
from flask import request

from blueprints.analytics.schemas import (
    AggregateIn,
    EventBatchIn,
    IngestAccepted,
    MetricPointOut,
    MetricSeriesOut,
    MetricsQuery,
)
from blueprints.common.auth import me
from blueprints.common.openapi import operation_doc
from blueprints.common.teams import current_membership, team_permission
from blueprints.jobs.schemas import JobEnvelope, job_out
from blueprints.jobs.views import accepted
from services.insights import aggregation_runs, analytics, rollups

bp = APIBlueprint("analytics", __name__, url_prefix="/api/v1/teams", tag="analytics")
F = TypeVar("F", bound=Callable[..., Any])

# A full batch (1,000 events with 8 KB of properties each, compactly encoded) is larger
# than the app-wide MAX_CONTENT_LENGTH (1 MiB); leave 1 KiB per event for the rest.
MAX_BATCH_BYTES = analytics.MAX_EVENTS * (analytics.MAX_PROPERTIES_BYTES + 1024)


def _batch_body_limit(view: F) -> F:
    """Raise this request's body limit to MAX_BATCH_BYTES before the body is parsed."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        request.max_content_length = MAX_BATCH_BYTES
        return view(*args, **kwargs)

    return cast(F, wrapper)


@bp.post("/<uuid:team_id>/analytics/events")
@team_permission("analytics.ingest", scope="ingest")
@_batch_body_limit
@bp.input(EventBatchIn, location="json", arg_name="body")
@bp.output(IngestAccepted, status_code=202)
def ingest_events(team_id: uuid.UUID, body: EventBatchIn) -> IngestAccepted:
    """Send up to 1,000 events: all stored or none (422 names each bad event's field)."""
    # EventBatchIn ran the service's rules on every event (and the batch size) already.
    events = [e.to_input() for e in body.events]
    accepted, duplicates = analytics.ingest_events(team_id, events, checked=True)
    return IngestAccepted(accepted=accepted, duplicates=duplicates)


@bp.get("/<uuid:team_id>/analytics/metrics")
@team_permission("analytics.read")
@bp.input(MetricsQuery, location="query", arg_name="query")
@bp.output(MetricSeriesOut)
def get_metric(team_id: uuid.UUID, query: MetricsQuery) -> MetricSeriesOut:
    """One metric as a zero-filled series read from the rollups (at most 1,000 points);
    the current hour fills in as aggregation runs."""
    points = rollups.series(team_id, query.name, query.from_, query.to, query.interval)
    values = [p.value for p in points]
    total = max(values) if query.name == rollups.ACTIVE_USERS else sum(values)
    return MetricSeriesOut(
        name=query.name,
        interval=query.interval,
        total=total,
        points=[MetricPointOut(bucket=p.bucket, value=p.value) for p in points],
    )


@bp.post("/<uuid:team_id>/analytics/aggregate")
@operation_doc(operation_id="aggregate_analytics")
@team_permission("analytics.aggregate")
@bp.input(AggregateIn, location="json", arg_name="body")
@bp.output(JobEnvelope, status_code=202)
@bp.doc(responses={
    409: "Another window of this team is already being aggregated",
    429: "Rate limited, or the team's last run finished too recently (see Retry-After)",
})  # fmt: skip
def aggregate(team_id: uuid.UUID, body: AggregateIn) -> Any:
    """Aggregate this team now instead of at the next hourly run; with `from` and `to`,
    also rebuild the team's rollups over those days from the raw events (e.g. after a
    fix). While a run of the team is pending the same request gets that job back."""
    job = aggregation_runs.request_run(me(), current_membership(), body.from_, body.to)
    return accepted(JobEnvelope(job=job_out(job)), job.id)
