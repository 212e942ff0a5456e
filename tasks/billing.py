"""Billing jobs (queue `payments`): charges and refunds, subscription changes at the
gateway, stored gateway webhooks, and the daily reconciliation.

Each is safe to run twice. Beat fires the `*.start_reconcile` triggers; each queues (at
most) one job per day, whose result is what operators read
(`GET /api/v1/admin/jobs?type=payments.reconcile`).
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any

from integrations.payments import GatewayRejected
from integrations.stripe_gateway import get_gateway
from services.billing import payments, reconciliation, refunds, subscription_jobs, webhooks
from services.jobs import names
from services.jobs.context import JobContext
from services.jobs.runner import job_task

# --- payments and refunds ------------------------------------------------------------------


@job_task(names.PAYMENTS_CHARGE, permanent=(GatewayRejected,))
def charge(ctx: JobContext) -> dict[str, Any]:
    """Charge a payment (args: payment_id); idempotent: at most one confirmation ever."""
    return payments.charge(uuid.UUID(ctx.args["payment_id"]), get_gateway())


@job_task(names.PAYMENTS_REFUND, permanent=(GatewayRejected,))
def refund(ctx: JobContext) -> dict[str, Any]:
    """Refund (part of) a payment (args: refund_id); idempotent via the gateway's tag."""
    return refunds.refund(uuid.UUID(ctx.args["refund_id"]), get_gateway())


# --- subscriptions: each converges one subscription with the gateway -----------------------


@job_task(names.SUBSCRIPTIONS_CREATE, permanent=(GatewayRejected,))
def create_subscription(ctx: JobContext) -> dict[str, Any]:
    """Create subscription `subscription_id` at the gateway with `payment_method`;
    idempotent (a stored provider id is only re-read)."""
    return subscription_jobs.create_at_gateway(
        uuid.UUID(ctx.args["subscription_id"]), str(ctx.args["payment_method"]), get_gateway(),
        actor_id=ctx.user_id,
    )  # fmt: skip


@job_task(names.SUBSCRIPTIONS_CHANGE_PLAN, permanent=(GatewayRejected,))
def change_subscription_plan(ctx: JobContext) -> dict[str, Any]:
    """Move subscription `subscription_id` to `plan`; idempotent (skips the call when the
    gateway already has the plan)."""
    return subscription_jobs.change_plan_at_gateway(
        uuid.UUID(ctx.args["subscription_id"]), str(ctx.args["plan"]), get_gateway(),
        actor_id=ctx.user_id, job_id=ctx.job_id,
    )  # fmt: skip


@job_task(names.SUBSCRIPTIONS_CANCEL, permanent=(GatewayRejected,))
def cancel_subscription(ctx: JobContext) -> dict[str, Any]:
    """End subscription `subscription_id` at its period end; idempotent."""
    return subscription_jobs.set_cancel_at_gateway(
        uuid.UUID(ctx.args["subscription_id"]), True, get_gateway(),
        actor_id=ctx.user_id, job_id=ctx.job_id,
    )  # fmt: skip


@job_task(names.SUBSCRIPTIONS_RESUME, permanent=(GatewayRejected,))
def resume_subscription(ctx: JobContext) -> dict[str, Any]:
    """Undo the pending cancellation of subscription `subscription_id`; idempotent."""
    return subscription_jobs.set_cancel_at_gateway(
        uuid.UUID(ctx.args["subscription_id"]), False, get_gateway(),
        actor_id=ctx.user_id, job_id=ctx.job_id,
    )  # fmt: skip


# --- webhooks ------------------------------------------------------------------------------


@job_task(names.WEBHOOKS_PROCESS, permanent=(GatewayRejected,))
def process_webhook(ctx: JobContext) -> dict[str, Any]:
    """Converge our state to the gateway's for one stored event (args: event_id);
    idempotent."""
    return webhooks.process_event(str(ctx.args["event_id"]), get_gateway())


# --- daily reconciliation with the gateway -------------------------------------------------


@job_task(names.PAYMENTS_START_RECONCILE)
def start_payments_reconcile(ctx: JobContext) -> dict[str, Any]:
    """Beat, daily: queue today's `payments.reconcile` job (none if it exists)."""
    return {"job_id": str(reconciliation.start_reconciliation(names.PAYMENTS_RECONCILE).id)}


@job_task(names.SUBSCRIPTIONS_START_RECONCILE)
def start_subscriptions_reconcile(ctx: JobContext) -> dict[str, Any]:
    """Beat, daily: queue today's `subscriptions.reconcile` job (none if it exists)."""
    job = reconciliation.start_reconciliation(names.SUBSCRIPTIONS_RECONCILE)
    return {"job_id": str(job.id)}


@job_task(names.PAYMENTS_RECONCILE, permanent=(GatewayRejected,))
def reconcile_payments(ctx: JobContext) -> dict[str, Any]:
    """Compare our payments created in [`since`, `until`) with the gateway's and report the
    mismatches (args: date, since, until); idempotent (reads and reports only)."""
    return reconciliation.reconcile_payments(
        str(ctx.args["date"]),
        datetime.fromisoformat(ctx.args["since"]),
        datetime.fromisoformat(ctx.args["until"]),
        get_gateway(),
    )


@job_task(names.SUBSCRIPTIONS_RECONCILE, permanent=(GatewayRejected,))
def reconcile_subscriptions(ctx: JobContext) -> dict[str, Any]:
    """Converge every live subscription with the gateway and dun the past-due ones
    (args: date); idempotent (dunning at most once per subscription and day)."""
    return reconciliation.reconcile_subscriptions(
        date.fromisoformat(ctx.args["date"]), get_gateway()
    )
