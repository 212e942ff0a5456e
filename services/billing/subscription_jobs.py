"""The `subscriptions.*` job bodies: create, re-plan, cancel or resume one subscription at
the gateway, each idempotent, and store what the gateway answers (through
subscription_mirror.sync_from_gateway). The requests that queue them are in
subscriptions.py.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from extensions import db
from integrations.payments import GatewayRejected, PaymentGateway
from models import Subscription, Team, User
from services.billing.subscription_mirror import (
    apply_changes,
    locked_subscription,
    sync_from_gateway,
)
from services.core import plans
from services.jobs.errors import PermanentError


class PaymentDeclined(PermanentError):
    """The gateway created the subscription but could not collect its first payment."""


def create_at_gateway(
    subscription_id: uuid.UUID, payment_method: str, gateway: PaymentGateway, *,
    actor_id: uuid.UUID | None,
) -> dict[str, Any]:  # fmt: skip
    """The `subscriptions.create` job body; idempotent: a stored provider id is only re-read.

    Creates (or reuses) the team's gateway customer and commits its id before creating the
    subscription with our idempotency key, so a retry never makes a second customer.
    """
    subscription = locked_subscription(subscription_id)
    if subscription is None or subscription.status == "canceled":
        return {"skipped": "subscription closed"}
    if subscription.provider_subscription_id is not None:
        found = gateway.get_subscription(subscription.provider_subscription_id)
        return _result(sync_from_gateway(found, actor_id=actor_id))
    if subscription.provider_customer_id is None:
        subscription.provider_customer_id = _team_customer(subscription.team_id, actor_id, gateway)
        db.session.commit()  # checkpoint: the customer is ours for every later attempt
        subscription = locked_subscription(subscription_id)
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
        subscription = locked_subscription(subscription_id)
        assert subscription is not None
        apply_changes(subscription, actor_id, "subscription.failed", status="canceled",
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
    subscription = locked_subscription(subscription_id)
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
    subscription = locked_subscription(subscription_id)
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


def _result(subscription: Subscription | None) -> dict[str, Any]:
    if subscription is None:
        return {"skipped": "unknown subscription"}
    return {
        "subscription_id": str(subscription.id),
        "status": subscription.status,
        "plan": subscription.plan,
        "cancel_at_period_end": subscription.cancel_at_period_end,
    }
