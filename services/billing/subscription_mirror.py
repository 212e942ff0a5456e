"""The mirror of the gateway's subscriptions: the gateway is the truth for status, plan,
period and cancellation, and `sync_from_gateway` copies it onto our row. The jobs
(subscription_jobs.py), webhooks and the daily reconciliation all converge through it;
every change is audited with its before and after.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from extensions import db
from integrations.payments import GatewaySubscription
from logs import get_logger
from models import Subscription, Team, TeamMember
from models.payment import SUBSCRIPTION_STATUSES
from services.core import plans
from services.core.audit import record_audit
from services.messaging.notifications import notify

log = get_logger(__name__)

# Gateway states outside our vocabulary: an abandoned first payment ends the subscription.
_STATUS_ALIASES = {"incomplete_expired": "canceled"}


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
        subscription = locked_subscription(ours) if ours else None
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
    apply_changes(
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


def apply_changes(
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


def locked_subscription(subscription_id: uuid.UUID) -> Subscription | None:
    """Our subscription row, locked for update and freshly read."""
    return db.session.scalar(
        select(Subscription)
        .where(Subscription.id == subscription_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
