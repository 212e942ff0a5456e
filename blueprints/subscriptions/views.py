"""HTTP for plans and team subscriptions (API.md "subscriptions").

`GET /api/v1/plans` is public: prices and limits are what a visitor compares before
signing up. Everything under `/teams/<team_id>/subscription` is guarded by
`@team_permission` (`subscription.read` to look, `subscription.manage` to change); every
change answers 202 with the job that carries it out at the gateway.
"""

from __future__ import annotations

import uuid
from typing import Any

from apiflask import APIBlueprint

from blueprints.common.auth import me
from blueprints.common.idempotency import idempotent
from blueprints.common.openapi import operation_doc
from blueprints.common.teams import current_membership, team_permission
from blueprints.jobs.schemas import job_out
from blueprints.jobs.views import accepted
from blueprints.subscriptions.schemas import (
    LimitsOut,
    PlanChangeIn,
    PlanOut,
    PlanPage,
    SeatsOut,
    SubscribeIn,
    SubscriptionEnvelope,
    SubscriptionJobEnvelope,
    SubscriptionOut,
)
from models import Job
from services.billing import subscriptions
from services.billing.subscriptions import TeamPlan
from services.core import plans
from services.core.plans import Plan

plans_bp = APIBlueprint("plans", __name__, url_prefix="/api/v1/plans", tag="subscriptions")
bp = APIBlueprint("subscriptions", __name__, url_prefix="/api/v1/teams", tag="subscriptions")


def plan_out(plan: Plan) -> PlanOut:
    return PlanOut(
        name=plan.name, display_name=plan.display_name, amount=plan.amount,
        currency=plan.currency, interval=plan.interval, limits=LimitsOut(seats=plan.limits.seats),
    )  # fmt: skip


def subscription_out(found: TeamPlan) -> SubscriptionOut:
    row = found.subscription
    seats = SeatsOut(limit=found.plan.limits.seats, used=found.seats_used)
    if row is None:  # the free plan: nothing to cancel, nothing that ends
        return SubscriptionOut(
            id=None, plan=plan_out(found.plan), effective_plan=found.plan.name, status="active",
            cancel_at_period_end=False, current_period_end=None, canceled_at=None, seats=seats,
        )  # fmt: skip
    return SubscriptionOut.model_validate(
        {"id": row.id, "plan": plan_out(plans.PLANS.get(row.plan, found.plan)),
         "effective_plan": found.plan.name, "status": row.status,
         "cancel_at_period_end": row.cancel_at_period_end,
         "current_period_end": row.current_period_end, "canceled_at": row.canceled_at,
         "seats": seats}
    )  # fmt: skip


def _accepted(job: Job) -> Any:
    found = subscriptions.get_team_plan(current_membership())
    return accepted(SubscriptionJobEnvelope(job=job_out(job), subscription=subscription_out(found)),
                    job.id)  # fmt: skip


@plans_bp.get("")
@plans_bp.output(PlanPage)
def list_plans() -> PlanPage:
    """Every plan with its price and limits, monthly first (public: no sign-in needed)."""
    return PlanPage(items=[plan_out(p) for p in plans.list_plans()])


@bp.get("/<uuid:team_id>/subscription")
@team_permission("subscription.read")
@bp.output(SubscriptionEnvelope)
def get_subscription(team_id: uuid.UUID) -> SubscriptionEnvelope:
    """The team's plan and subscription; a team that never subscribed is on the free plan."""
    return SubscriptionEnvelope(
        subscription=subscription_out(subscriptions.get_team_plan(current_membership()))
    )


@bp.post("/<uuid:team_id>/subscription")
@operation_doc(operation_id="create_subscription")
@team_permission("subscription.manage")
@bp.input(SubscribeIn, location="json", arg_name="body")
@idempotent(required=True)
@bp.output(SubscriptionJobEnvelope, status_code=202)
@bp.doc(responses={409: "Already on that plan, or another change is running"})
def subscribe(team_id: uuid.UUID, body: SubscribeIn) -> Any:
    """Subscribe the team to a paid plan (requires Idempotency-Key).

    A job creates the subscription at the gateway; it turns `active` once the first
    payment went through (the job fails, and it stays `incomplete`, if it was declined).
    """
    return _accepted(
        subscriptions.subscribe(
            me(), team_id, plan_name=body.plan, payment_method=body.payment_method
        )
    )


@bp.patch("/<uuid:team_id>/subscription")
@team_permission("subscription.manage")
@bp.input(PlanChangeIn, location="json", arg_name="body")
@idempotent()
@bp.output(SubscriptionJobEnvelope, status_code=202)
@bp.doc(responses={409: "Already on that plan, or another change is running"})
def change_plan(team_id: uuid.UUID, body: PlanChangeIn) -> Any:
    """Move to another paid plan; the gateway prorates the difference."""
    return _accepted(subscriptions.request_plan_change(me(), team_id, body.plan))


@bp.delete("/<uuid:team_id>/subscription")
@team_permission("subscription.manage")
@idempotent()
@bp.output(SubscriptionJobEnvelope, status_code=202)
@bp.doc(responses={409: "Nothing to cancel, or another change is running"})
def cancel_subscription(team_id: uuid.UUID) -> Any:
    """Cancel at the end of the paid period: the plan stays until then (resume undoes it)."""
    return _accepted(subscriptions.request_cancellation(me(), team_id))


@bp.post("/<uuid:team_id>/subscription/resume")
@team_permission("subscription.manage")
@idempotent()
@bp.output(SubscriptionJobEnvelope, status_code=202)
@bp.doc(responses={409: "Nothing to resume, or another change is running"})
def resume_subscription(team_id: uuid.UUID) -> Any:
    """Keep a subscription that was set to end with its period."""
    return _accepted(subscriptions.request_resumption(me(), team_id))
