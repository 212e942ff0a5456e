"""Fixtures of the integration tests: a circuit breaker of each test's own, and the Stripe
gateway on the test server behind it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pybreaker
import pytest
from apiflask import APIFlask

from config import Settings
from extensions import redis
from integrations.stripe_gateway import StripeGateway
from tests.integrations.stripe_helpers import own_breaker


@pytest.fixture
def circuit_name() -> Iterator[str]:
    """A breaker name of its own, so no test here opens the app's `stripe` circuit."""
    name = f"test-stripe-{uuid.uuid4().hex[:12]}"
    yield name
    keys = list(redis.client.scan_iter(f"breaker:{name}:*"))
    if keys:
        redis.client.delete(*keys)


@pytest.fixture
def circuit(app: APIFlask, circuit_name: str) -> pybreaker.CircuitBreaker:
    """A breaker that one counted failure would open: proof that a test counted none."""
    return own_breaker(circuit_name, fail_max=1)


@pytest.fixture
def gateway(settings: Settings, circuit: pybreaker.CircuitBreaker) -> StripeGateway:
    return StripeGateway(settings, circuit=lambda: circuit)
