"""Subscription jobs (queue `payments`): each converges one subscription with the gateway."""

from __future__ import annotations

import uuid
from typing import Any

from integrations.payments import GatewayRejected
from integrations.stripe_gateway import get_gateway
from services.billing import subscription_jobs
from services.jobs import names
from services.jobs.context import JobContext
from services.jobs.runner import job_task


@job_task(names.SUBSCRIPTIONS_CREATE, permanent=(GatewayRejected,))
def create(ctx: JobContext) -> dict[str, Any]:
    """Create subscription `subscription_id` at the gateway with `payment_method`;
    idempotent (a stored provider id is only re-read)."""
    return subscription_jobs.create_at_gateway(
        uuid.UUID(ctx.args["subscription_id"]), str(ctx.args["payment_method"]), get_gateway(),
        actor_id=ctx.user_id,
    )  # fmt: skip


@job_task(names.SUBSCRIPTIONS_CHANGE_PLAN, permanent=(GatewayRejected,))
def change_plan(ctx: JobContext) -> dict[str, Any]:
    """Move subscription `subscription_id` to `plan`; idempotent (skips the call when the
    gateway already has the plan)."""
    return subscription_jobs.change_plan_at_gateway(
        uuid.UUID(ctx.args["subscription_id"]), str(ctx.args["plan"]), get_gateway(),
        actor_id=ctx.user_id, job_id=ctx.job_id,
    )  # fmt: skip


@job_task(names.SUBSCRIPTIONS_CANCEL, permanent=(GatewayRejected,))
def cancel(ctx: JobContext) -> dict[str, Any]:
    """End subscription `subscription_id` at its period end; idempotent."""
    return subscription_jobs.set_cancel_at_gateway(
        uuid.UUID(ctx.args["subscription_id"]), True, get_gateway(),
        actor_id=ctx.user_id, job_id=ctx.job_id,
    )  # fmt: skip


@job_task(names.SUBSCRIPTIONS_RESUME, permanent=(GatewayRejected,))
def resume(ctx: JobContext) -> dict[str, Any]:
    """Undo the pending cancellation of subscription `subscription_id`; idempotent."""
    return subscription_jobs.set_cancel_at_gateway(
        uuid.UUID(ctx.args["subscription_id"]), False, get_gateway(),
        actor_id=ctx.user_id, job_id=ctx.job_id,
    )  # fmt: skip
