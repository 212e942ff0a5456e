"""HTTP for analytics ingestion (issue 7): batches of events from apps and API keys."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar, cast

from apiflask import APIBlueprint
from flask import request

from blueprints.analytics.schemas import EventBatchIn, IngestAccepted
from blueprints.common.teams import team_permission
from services import analytics

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
    accepted, duplicates = analytics.ingest_events(team_id, [e.to_input() for e in body.events])
    return IngestAccepted(accepted=accepted, duplicates=duplicates)
