"""Daily reconciliation with the payment gateway (queue `payments`).

Beat fires the `*.start_reconcile` triggers; each queues (at most) one job per day, whose
result is what operators read (`GET /api/v1/admin/jobs?type=payments.reconcile`).
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from integrations.payments import GatewayRejected
from integrations.stripe_gateway import get_gateway
from services.billing import reconciliation
from services.jobs import names
from services.jobs.context import JobContext
from services.jobs.runner import job_task, periodic_task


@periodic_task(names.PAYMENTS_START_RECONCILE)
def start_payments_reconcile() -> str:
    """Beat, daily: queue today's `payments.reconcile` job (none if it exists)."""
    return str(reconciliation.start_reconciliation(names.PAYMENTS_RECONCILE).id)


@periodic_task(names.SUBSCRIPTIONS_START_RECONCILE)
def start_subscriptions_reconcile() -> str:
    """Beat, daily: queue today's `subscriptions.reconcile` job (none if it exists)."""
    return str(reconciliation.start_reconciliation(names.SUBSCRIPTIONS_RECONCILE).id)


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
