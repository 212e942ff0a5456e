"""The Stripe gateway's subscriptions against localstripe: the lifecycle, and a declining card."""

from __future__ import annotations

import time
import uuid

import pytest

from integrations.payments import (
    GatewayRejected,
    GatewaySubscription,
)
from integrations.stripe_gateway import StripeGateway
from tests.integrations.stripe_helpers import DECLINING_CARD, key


def monthly_plan(gw: StripeGateway, plan_id: str, amount: int = 900) -> str:
    return gw.ensure_plan(
        plan_id=plan_id, name=plan_id.title(), amount=amount, currency="EUR", interval="month"
    )


def new_customer(gw: StripeGateway) -> str:
    return gw.create_customer(
        email="team@example.com", name="Team", metadata={"team": "t1"}, idempotency_key=key()
    )


def test_subscription_lifecycle(gateway: StripeGateway) -> None:
    suffix = uuid.uuid4().hex[:8]
    customer = new_customer(gateway)
    assert customer.startswith("cus_")
    basic = monthly_plan(gateway, f"basic-{suffix}")
    assert basic == f"basic-{suffix}"
    assert monthly_plan(gateway, basic) == basic  # exists already: nothing created
    with pytest.raises(GatewayRejected, match="new plan id"):
        monthly_plan(gateway, basic, amount=1000)  # a price never changes under an id
    pro = monthly_plan(gateway, f"pro-{suffix}", amount=2900)

    def subscribe(idempotency_key: str) -> GatewaySubscription:
        return gateway.create_subscription(
            customer_id=customer,
            plan_id=basic,
            payment_method="pm_card_visa",
            metadata={"team": "t1"},
            idempotency_key=idempotency_key,
        )

    sub_key = key()
    sub = subscribe(sub_key)
    assert sub.status in {"active", "trialing"}
    assert (sub.customer_id, sub.plan_id, sub.cancel_at_period_end) == (customer, basic, False)
    assert sub.current_period_end is not None and sub.current_period_end > time.time()
    assert sub.metadata["team"] == "t1"
    assert subscribe(sub_key).id == sub.id  # a retried job finds what it created

    upgraded = gateway.change_subscription_plan(sub.id, plan_id=pro, idempotency_key=key())
    assert (upgraded.id, upgraded.plan_id, upgraded.status) == (sub.id, pro, "active")
    retried = gateway.change_subscription_plan(sub.id, plan_id=pro, idempotency_key=key())
    assert retried == upgraded

    cancelling = gateway.set_cancel_at_period_end(sub.id, True, idempotency_key=key())
    assert cancelling.cancel_at_period_end and cancelling.status == "active"
    assert gateway.get_subscription(sub.id) == cancelling
    kept = gateway.set_cancel_at_period_end(sub.id, False, idempotency_key=key())
    assert not kept.cancel_at_period_end


def test_subscription_paid_with_a_declining_card_is_incomplete(gateway: StripeGateway) -> None:
    sub = gateway.create_subscription(
        customer_id=new_customer(gateway),
        plan_id=monthly_plan(gateway, f"basic-{uuid.uuid4().hex[:8]}"),
        payment_method=DECLINING_CARD,
        metadata={},
        idempotency_key=key(),
    )
    assert sub.status == "incomplete"
