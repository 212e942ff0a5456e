"""Helpers of the Stripe gateway tests: idempotency keys, breakers of their own, payments."""

from __future__ import annotations

import uuid

import pybreaker

from extensions import redis
from integrations.breaker import build_breaker
from integrations.payments import (
    GatewayPayment,
)
from integrations.stripe_gateway import StripeGateway

DECLINING_CARD = "pm_card_chargeCustomerFail"  # 4000000000000341: attaches, every charge fails


def key() -> str:
    return f"test-{uuid.uuid4()}"


def own_breaker(
    name: str, fail_max: int = 5, reset_seconds: float = 30
) -> pybreaker.CircuitBreaker:
    return build_breaker(name, client=redis.client, fail_max=fail_max, reset_seconds=reset_seconds)


def new_payment(
    gw: StripeGateway, amount: int = 1000, method: str = "pm_card_visa"
) -> GatewayPayment:
    return gw.create_payment(
        amount=amount,
        currency="EUR",
        payment_method=method,
        description="Order 42",
        metadata={"order": "42"},
        idempotency_key=key(),
    )


def paid(gw: StripeGateway, amount: int = 1000) -> GatewayPayment:
    return gw.confirm_payment(new_payment(gw, amount).id, idempotency_key=key())
