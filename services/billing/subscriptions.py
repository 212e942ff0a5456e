"""Team subscriptions: subscribe, change plan, cancel at period end, resume; mirror the gateway.

Requests record the intent (audited) and queue one `subscriptions.*` job; the job talks
to the gateway and stores what the gateway answers. The gateway is the truth for status,
plan, period and cancellation: `sync_from_gateway` copies it onto our row, and jobs,
webhooks and the daily reconciliation all converge through it. Only one change per team
is in flight at a time (409 otherwise), so jobs never race each other at the gateway.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flask import current_app
from sqlalchemy import select

from extensions import db
from integrations.payments import GatewayRejected, GatewaySubscription, PaymentGateway
from logs import get_logger
from models import Job, Subscription, Team, TeamMember, User
from models.payment import SUBSCRIPTION_STATUSES
from services.core import plans
from services.core.audit import record_audit
from services.core.errors import Conflict, NotFound
from services.core.plans import Plan
from services.jobs import names
from services.jobs.errors import PermanentError
from services.jobs.outbox import enqueue
from services.messaging.notifications import notify
from services.teams.teams import load_membership

log = get_logger(__name__)

_TASKS = (
    names.SUBSCRIPTIONS_CREATE,
    names.SUBSCRIPTIONS_CHANGE_PLAN,
    names.SUBSCRIPTIONS_CANCEL,
    names.SUBSCRIPTIONS_RESUME,
)
_PENDING_JOB = ("queued", "retrying", "running")
# Gateway states outside our vocabulary: an abandoned first payment ends the subscription.
_STATUS_ALIASES = {"incomplete_expired": "canceled"}
# States in which the plan can be changed or the subscription cancelled/resumed.
_CHANGEABLE = frozenset({"trialing", "active", "past_due"})


class PaymentDeclined(PermanentError):
    """The gateway created the subscription but could not collect its first payment."""


@dataclass(frozen=True)
class TeamPlan:
    """What a team is on: its plan, the subscription behind it (None on free), seats used."""

    plan: Plan
    subscription: Subscription | None
    seats_used: int


# Requests ---------------------------------------------------------------------------------


def get_team_plan(membership: TeamMember) -> TeamPlan:
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
        _set(current, user.id, "subscription.abandoned", status="canceled",
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


# Jobs -------------------------------------------------------------------------------------


def create_at_gateway(
    subscription_id: uuid.UUID, payment_method: str, gateway: PaymentGateway, *,
    actor_id: uuid.UUID | None,
) -> dict[str, Any]:  # fmt: skip
    """The `subscriptions.create` job body; idempotent: a stored provider id is only re-read.

    Creates (or reuses) the team's gateway customer and commits its id before creating the
    subscription with our idempotency key, so a retry never makes a second customer.
    """
    subscription = _locked(subscription_id)
    if subscription is None or subscription.status == "canceled":
        return {"skipped": "subscription closed"}
    if subscription.provider_subscription_id is not None:
        found = gateway.get_subscription(subscription.provider_subscription_id)
        return _result(sync_from_gateway(found, actor_id=actor_id))
    if subscription.provider_customer_id is None:
        subscription.provider_customer_id = _team_customer(subscription.team_id, actor_id, gateway)
        db.session.commit()  # checkpoint: the customer is ours for every later attempt
        subscription = _locked(subscription_id)
        assert subscription is not None and subscription.provider_customer_id is not None
    plan = plans.PLANS[subscription.plan]
    try:
        created = gateway.create_subscription(
            customer_id=subscription.provider_customer_id,
            plan_id=plans.ensure_gateway_plan(gateway, plan),
            payment_method=payment_method,
            metadata={"subscription_id": str(subscription.id),
                      "team_id": str(subscription.team_id)},
            idempotency_key=f"subscription-{subscription.id}-create",
        )  # fmt: skip
    except GatewayRejected:
        # Nothing was created (a bad payment method, say): the attempt is over, and the
        # team is back on the free plan at once rather than showing a stuck `incomplete`.
        db.session.rollback()
        subscription = _locked(subscription_id)
        assert subscription is not None
        _set(subscription, actor_id, "subscription.failed", status="canceled",
             canceled_at=datetime.now(UTC))  # fmt: skip
        db.session.commit()
        raise
    synced = sync_from_gateway(created, actor_id=actor_id)
    if synced is not None and synced.status == "incomplete":
        # The first payment was declined. Keep the mirror of the gateway's subscription
        # (it expires there on its own) and fail the job, so the user sees why.
        db.session.commit()
        raise PaymentDeclined(
            "The first payment of the subscription did not go through; subscribe again "
            "with another payment method."
        )
    return _result(synced)


def change_plan_at_gateway(
    subscription_id: uuid.UUID, plan_name: str, gateway: PaymentGateway, *,
    actor_id: uuid.UUID | None, job_id: uuid.UUID,
) -> dict[str, Any]:  # fmt: skip
    """The `subscriptions.change_plan` job body; idempotent: a subscription the gateway
    already has on the plan is only re-read."""
    subscription = _locked(subscription_id)
    if subscription is None or subscription.provider_subscription_id is None:
        return {"skipped": "no gateway subscription"}
    plan_id = plans.ensure_gateway_plan(gateway, plans.PLANS[plan_name])
    found = gateway.get_subscription(subscription.provider_subscription_id)
    if found.plan_id != plan_id and found.status != "canceled":
        found = gateway.change_subscription_plan(
            found.id, plan_id=plan_id, idempotency_key=f"subscription-{job_id}-plan"
        )
    return _result(sync_from_gateway(found, actor_id=actor_id))


def set_cancel_at_gateway(
    subscription_id: uuid.UUID, cancel: bool, gateway: PaymentGateway, *,
    actor_id: uuid.UUID | None, job_id: uuid.UUID,
) -> dict[str, Any]:  # fmt: skip
    """The `subscriptions.cancel`/`resume` job body; idempotent: the flag is only sent when
    the gateway does not have it yet."""
    subscription = _locked(subscription_id)
    if subscription is None or subscription.provider_subscription_id is None:
        return {"skipped": "no gateway subscription"}
    found = gateway.get_subscription(subscription.provider_subscription_id)
    if found.cancel_at_period_end != cancel and found.status != "canceled":
        found = gateway.set_cancel_at_period_end(
            found.id, cancel, idempotency_key=f"subscription-{job_id}-cancel-{cancel}"
        )
    return _result(sync_from_gateway(found, actor_id=actor_id))


def _team_customer(team_id: uuid.UUID, actor_id: uuid.UUID | None, gateway: PaymentGateway) -> str:
    """The team's gateway customer: the one an earlier subscription used, or a new one."""
    earlier = db.session.scalar(
        select(Subscription.provider_customer_id)
        .where(Subscription.team_id == team_id, Subscription.provider_customer_id.is_not(None))
        .order_by(Subscription.created_at.desc())
        .limit(1)
    )
    if earlier is not None:
        return earlier
    team = db.session.get(Team, team_id)
    if team is None:
        raise PermanentError(f"team {team_id} does not exist")
    billing = db.session.get(User, actor_id) if actor_id else None
    if billing is None and team.created_by_id:
        billing = db.session.get(User, team.created_by_id)
    return gateway.create_customer(
        email=billing.email if billing else "",
        name=team.name,
        metadata={"team_id": str(team_id)},
        idempotency_key=f"team-{team_id}-customer",
    )


def _locked(subscription_id: uuid.UUID) -> Subscription | None:
    return db.session.scalar(
        select(Subscription)
        .where(Subscription.id == subscription_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )


def _result(subscription: Subscription | None) -> dict[str, Any]:
    if subscription is None:
        return {"skipped": "unknown subscription"}
    return {
        "subscription_id": str(subscription.id),
        "status": subscription.status,
        "plan": subscription.plan,
        "cancel_at_period_end": subscription.cancel_at_period_end,
    }


# Convergence ------------------------------------------------------------------------------


def sync_from_gateway(
    sub: GatewaySubscription, *, actor_id: uuid.UUID | None = None
) -> Subscription | None:
    """Copy the gateway's subscription onto our row (found by provider id, else by our id in
    its metadata); None if it is not ours. Idempotent; audits what changed; no commit."""
    subscription = db.session.scalar(
        select(Subscription)
        .where(Subscription.provider_subscription_id == sub.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if subscription is None:
        ours = _uuid_or_none(sub.metadata.get("subscription_id"))
        subscription = _locked(ours) if ours else None
        if subscription is None or subscription.provider_subscription_id not in (None, sub.id):
            log.warning("gateway_subscription_unknown", provider_subscription_id=sub.id)
            return None
    status = _STATUS_ALIASES.get(sub.status, sub.status)
    if status not in SUBSCRIPTION_STATUSES:
        log.warning("gateway_subscription_status_unknown", status=sub.status,
                    subscription_id=str(subscription.id))  # fmt: skip
        status = subscription.status
    if subscription.status == "canceled" and status != "canceled" and _another_live(subscription):
        # We closed this row and the team has subscribed again since; two live rows cannot
        # coexist, so operators must settle it (the reconciliation log shows both).
        log.error("gateway_subscription_revived_conflict", subscription_id=str(subscription.id))
        status = "canceled"
    plan = plans.plan_for_gateway_id(sub.plan_id)
    if plan is None:
        log.warning("gateway_plan_unknown", plan_id=sub.plan_id,
                    subscription_id=str(subscription.id))  # fmt: skip
    period_end = (
        datetime.fromtimestamp(sub.current_period_end, UTC) if sub.current_period_end else None
    )
    canceled_at = subscription.canceled_at
    if status == "canceled" and canceled_at is None:
        canceled_at = datetime.now(UTC)
    if status == "past_due" and subscription.status != "past_due":
        _notify_past_due(subscription, plan.name if plan else subscription.plan)
    _set(
        subscription, actor_id, "subscription.updated",
        status=status,
        plan=plan.name if plan else subscription.plan,
        provider_subscription_id=sub.id,
        provider_customer_id=sub.customer_id or subscription.provider_customer_id,
        current_period_end=period_end,
        cancel_at_period_end=sub.cancel_at_period_end,
        canceled_at=canceled_at,
    )  # fmt: skip
    return subscription


def _notify_past_due(subscription: Subscription, plan_name: str) -> None:
    """Tell whoever manages billing, in the app (the dunning email covers the inbox)."""

    managers = db.session.scalars(
        select(TeamMember.user_id).where(
            TeamMember.team_id == subscription.team_id, TeamMember.role.in_(("owner", "admin"))
        )
    ).all()
    team = db.session.get(Team, subscription.team_id)
    notify(managers, "subscription_past_due",
           {"team": team.name if team else "", "team_id": str(subscription.team_id),
            "plan": plan_name},
           event_key=f"past_due:{subscription.id}:{datetime.now(UTC).date()}",
           team_id=subscription.team_id, email=False)  # fmt: skip


def _set(
    subscription: Subscription, actor_id: uuid.UUID | None, action: str, **values: Any
) -> None:
    """Apply `values` to the row and audit the before/after of what actually changed."""
    diff = {
        name: {"from": _plain(getattr(subscription, name)), "to": _plain(value)}
        for name, value in values.items()
        if getattr(subscription, name) != value
    }
    if not diff:
        return
    for name, value in values.items():
        setattr(subscription, name, value)
    record_audit(
        action, actor_id=actor_id, team_id=subscription.team_id,
        subject_type="subscription", subject_id=subscription.id, data=diff,
    )  # fmt: skip


def _another_live(subscription: Subscription) -> bool:
    other = plans.live_subscription(subscription.team_id)
    return other is not None and other.id != subscription.id


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _uuid_or_none(value: str | None) -> uuid.UUID | None:
    try:
        return uuid.UUID(value) if value else None
    except ValueError:
        return None
