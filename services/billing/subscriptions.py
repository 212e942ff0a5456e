"""Team subscriptions as the API asks for them: subscribe, change plan, cancel at period
end, resume, and what a team is on.

Each request records the intent (audited) and queues one `subscriptions.*` job
(subscription_jobs.py talks to the gateway); the gateway is the truth, mirrored onto our
row by subscription_mirror.py. Only one change per team is in flight at a time (409
otherwise), so jobs never race each other at the gateway.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from flask import current_app
from sqlalchemy import select

from extensions import db
from models import Job, Subscription, User
from services.billing.subscription_mirror import apply_changes
from services.core import plans
from services.core.audit import record_audit
from services.core.errors import Conflict, NotFound
from services.core.permissions import Membership
from services.core.plans import Plan
from services.jobs import names
from services.jobs.outbox import enqueue
from services.teams.teams import load_membership

_TASKS = (
    names.SUBSCRIPTIONS_CREATE,
    names.SUBSCRIPTIONS_CHANGE_PLAN,
    names.SUBSCRIPTIONS_CANCEL,
    names.SUBSCRIPTIONS_RESUME,
)
_PENDING_JOB = ("queued", "retrying", "running")
# States in which the plan can be changed or the subscription cancelled/resumed.
_CHANGEABLE = frozenset({"trialing", "active", "past_due"})


@dataclass(frozen=True)
class TeamPlan:
    """What a team is on: its plan, the subscription behind it (None on free), seats used."""

    plan: Plan
    subscription: Subscription | None
    seats_used: int


def get_team_plan(membership: Membership) -> TeamPlan:
    """The team's plan and live subscription; a team without one is on the free plan."""
    team_id = membership.team_id
    return TeamPlan(
        plans.effective_plan(team_id), plans.live_subscription(team_id), plans.seats_used(team_id)
    )


def subscribe(user: User, team_id: uuid.UUID, *, plan_name: str, payment_method: str) -> Job:
    """Start a paid subscription (admin+): an `incomplete` row and a `subscriptions.create`
    job (args: subscription_id, payment_method). One transaction."""
    load_membership(user, team_id, "subscription.manage", lock=True)
    plan = plans.paid_plan(plan_name)
    _refuse_if_busy(team_id)
    current = _live_locked(team_id)
    if current is not None:
        if current.status != "incomplete":
            raise Conflict(
                f"This team already has a subscription ({current.plan}, {current.status}); "
                "change its plan instead.",
                extra={"subscription_id": str(current.id)},
            )
        # An earlier attempt whose first payment never went through (its job has
        # finished, see _refuse_if_busy): close it, so this attempt can take its place.
        apply_changes(current, user.id, "subscription.abandoned", status="canceled",
             canceled_at=datetime.now(UTC))  # fmt: skip
        db.session.flush()  # the unique "one live subscription" index sees it closed first
    subscription = Subscription(
        id=uuid.uuid4(), team_id=team_id, plan=plan.name, status="incomplete"
    )
    db.session.add(subscription)
    db.session.flush()
    job = enqueue(
        names.SUBSCRIPTIONS_CREATE,
        args={"subscription_id": str(subscription.id), "payment_method": payment_method},
        user_id=user.id,
        team_id=team_id,
        max_attempts=_max_attempts(),
    )
    record_audit(
        "subscription.created", actor_id=user.id, team_id=team_id,
        subject_type="subscription", subject_id=subscription.id,
        data={"plan": {"from": plans.FREE, "to": plan.name},
              "status": {"from": None, "to": "incomplete"}, "job_id": str(job.id)},
    )  # fmt: skip
    db.session.commit()
    return job


def request_plan_change(user: User, team_id: uuid.UUID, plan_name: str) -> Job:
    """Queue `subscriptions.change_plan` (args: subscription_id, plan) to move to another
    paid plan (admin+); the gateway prorates. One transaction."""
    load_membership(user, team_id, "subscription.manage", lock=True)
    plan = plans.paid_plan(plan_name)
    _refuse_if_busy(team_id)
    subscription = _changeable(team_id)
    if subscription.plan == plan.name:
        raise Conflict(f"The team is already on the {plan.display_name} plan.")
    members = plans.member_count(team_id)
    if members > plan.limits.seats:
        raise plans.PlanLimitReached(
            f"The {plan.display_name} plan allows {plan.limits.seats} members and the team "
            f"has {members}; remove members first or choose a bigger plan.",
            extra={"plan": plan.name, "seats": plan.limits.seats},
        )
    job = enqueue(
        names.SUBSCRIPTIONS_CHANGE_PLAN,
        args={"subscription_id": str(subscription.id), "plan": plan.name},
        user_id=user.id,
        team_id=team_id,
        max_attempts=_max_attempts(),
    )
    record_audit(
        "subscription.plan_change_requested", actor_id=user.id, team_id=team_id,
        subject_type="subscription", subject_id=subscription.id,
        data={"plan": {"from": subscription.plan, "to": plan.name}, "job_id": str(job.id)},
    )  # fmt: skip
    db.session.commit()
    return job


def request_cancellation(user: User, team_id: uuid.UUID) -> Job:
    """Queue `subscriptions.cancel` (args: subscription_id): the subscription ends at the
    end of the paid period (admin+). One transaction."""
    return _request_cancel_flag(user, team_id, cancel=True)


def request_resumption(user: User, team_id: uuid.UUID) -> Job:
    """Queue `subscriptions.resume` (args: subscription_id): undo a pending cancellation
    (admin+). One transaction."""
    return _request_cancel_flag(user, team_id, cancel=False)


def _request_cancel_flag(user: User, team_id: uuid.UUID, *, cancel: bool) -> Job:
    load_membership(user, team_id, "subscription.manage", lock=True)
    _refuse_if_busy(team_id)
    subscription = _changeable(team_id)
    if subscription.cancel_at_period_end == cancel:
        raise Conflict(
            "The subscription is already set to end with its period."
            if cancel
            else "The subscription is not set to end; there is nothing to resume."
        )
    job = enqueue(
        names.SUBSCRIPTIONS_CANCEL if cancel else names.SUBSCRIPTIONS_RESUME,
        args={"subscription_id": str(subscription.id)},
        user_id=user.id,
        team_id=team_id,
        max_attempts=_max_attempts(),
    )
    record_audit(
        "subscription.cancellation_requested" if cancel else "subscription.resumption_requested",
        actor_id=user.id, team_id=team_id, subject_type="subscription",
        subject_id=subscription.id,
        data={"cancel_at_period_end": {"from": not cancel, "to": cancel}, "job_id": str(job.id)},
    )  # fmt: skip
    db.session.commit()
    return job


def _max_attempts() -> int:
    # Like payments, these outlast a gateway outage rather than give up on a paying team.
    return int(current_app.config["SETTINGS"].payments_max_attempts)


def _refuse_if_busy(team_id: uuid.UUID) -> None:
    """409 while another subscription job of the team is unfinished (they would race)."""
    pending = db.session.scalar(
        select(Job.id).where(
            Job.team_id == team_id, Job.type.in_(_TASKS), Job.status.in_(_PENDING_JOB)
        )
    )
    if pending is not None:
        raise Conflict(
            "A change to this team's subscription is still in progress; try again when it "
            "has finished.",
            extra={"job_id": str(pending)},
        )


def _live_locked(team_id: uuid.UUID) -> Subscription | None:
    return db.session.scalar(
        select(Subscription)
        .where(Subscription.team_id == team_id, Subscription.status != "canceled")
        .with_for_update()
        .execution_options(populate_existing=True)
    )


def _changeable(team_id: uuid.UUID) -> Subscription:
    subscription = _live_locked(team_id)
    if subscription is None:
        raise NotFound("The team has no subscription; it is on the free plan.")
    if subscription.status not in _CHANGEABLE:
        raise Conflict(
            f"The subscription is {subscription.status}; it can be changed once it is active."
        )
    return subscription
