"""Subscription jobs (queue `payments`): each converges one subscription with the gateway."""

from __future__ import annotations

import uuid
from typing import Any

from integrations.stripe_gateway import get_gateway
from services.billing import subscriptions
from services.jobs.runner import JobContext, job_task


@job_task(subscriptions.CREATE_TASK)
def create(ctx: JobContext) -> dict[str, Any]:
    """Create subscription `subscription_id` at the gateway with `payment_method`;
    idempotent (a stored provider id is only re-read)."""
    return subscriptions.create_at_gateway(
        uuid.UUID(ctx.args["subscription_id"]), str(ctx.args["payment_method"]), get_gateway(),
        actor_id=ctx.user_id,
    )  # fmt: skip


@job_task(subscriptions.CHANGE_PLAN_TASK)
def change_plan(ctx: JobContext) -> dict[str, Any]:
    """Move subscription `subscription_id` to `plan`; idempotent (skips the call when the
    gateway already has the plan)."""
    return subscriptions.change_plan_at_gateway(
        uuid.UUID(ctx.args["subscription_id"]), str(ctx.args["plan"]), get_gateway(),
        actor_id=ctx.user_id, job_id=ctx.job_id,
    )  # fmt: skip


@job_task(subscriptions.CANCEL_TASK)
def cancel(ctx: JobContext) -> dict[str, Any]:
    """End subscription `subscription_id` at its period end; idempotent."""
    return subscriptions.set_cancel_at_gateway(
        uuid.UUID(ctx.args["subscription_id"]), True, get_gateway(),
        actor_id=ctx.user_id, job_id=ctx.job_id,
    )  # fmt: skip


@job_task(subscriptions.RESUME_TASK)
def resume(ctx: JobContext) -> dict[str, Any]:
    """Undo the pending cancellation of subscription `subscription_id`; idempotent."""
    return subscriptions.set_cancel_at_gateway(
        uuid.UUID(ctx.args["subscription_id"]), False, get_gateway(),
        actor_id=ctx.user_id, job_id=ctx.job_id,
    )  # fmt: skip
