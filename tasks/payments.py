"""Payment jobs (queue `payments`): charge and refund, each safe to run twice."""

from __future__ import annotations

import uuid
from typing import Any

from integrations.payments import GatewayRejected
from integrations.stripe_gateway import get_gateway
from services.billing import payments, refunds
from services.jobs import names
from services.jobs.context import JobContext
from services.jobs.runner import job_task


@job_task(names.PAYMENTS_CHARGE, permanent=(GatewayRejected,))
def charge(ctx: JobContext) -> dict[str, Any]:
    """Charge a payment (args: payment_id); idempotent: at most one confirmation ever."""
    return payments.charge(uuid.UUID(ctx.args["payment_id"]), get_gateway())


@job_task(names.PAYMENTS_REFUND, permanent=(GatewayRejected,))
def refund(ctx: JobContext) -> dict[str, Any]:
    """Refund (part of) a payment (args: refund_id); idempotent via the gateway's tag."""
    return refunds.refund(uuid.UUID(ctx.args["refund_id"]), get_gateway())
