"""Processing of stored gateway webhook events (queue `payments`)."""

from __future__ import annotations

from typing import Any

from integrations.payments import GatewayRejected
from integrations.stripe_gateway import get_gateway
from services.billing import webhooks
from services.jobs import names
from services.jobs.context import JobContext
from services.jobs.runner import job_task


@job_task(names.WEBHOOKS_PROCESS, permanent=(GatewayRejected,))
def process(ctx: JobContext) -> dict[str, Any]:
    """Converge our state to the gateway's for one event (args: event_id); idempotent."""
    return webhooks.process_event(str(ctx.args["event_id"]), get_gateway())
