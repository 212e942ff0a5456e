"""The Stripe gateway against localstripe: payments, refunds, listing, and the shared circuit
breaker through timeouts and outages.
"""

from __future__ import annotations

import socket
import time

import pybreaker
import pytest
import stripe
from apiflask import APIFlask

from config import Settings
from integrations import stripe_client
from integrations.breaker import breaker, build_breaker
from integrations.payments import (
    PI_REQUIRES_CONFIRMATION,
    PI_REQUIRES_PAYMENT_METHOD,
    PI_SUCCEEDED,
    GatewayRejected,
    GatewayUnavailable,
)
from integrations.stripe_gateway import StripeGateway, get_gateway
from redis_urls import redis_client
from scripts.devservices import free_port
from tests.integrations.stripe_helpers import DECLINING_CARD, key, new_payment, own_breaker, paid
from tests.support import LocalStripe, PrivateStacks, make_settings, wait_for


def test_app_gateway_is_shared_and_pays_through_the_test_server(app: APIFlask) -> None:
    gw = get_gateway()
    assert gw is get_gateway()  # one client (and connection pool) per settings
    payment = gw.create_payment(
        amount=250,
        currency="usd",
        payment_method="pm_card_visa",
        description=None,
        metadata={},
        idempotency_key=key(),
    )
    assert (payment.status, payment.currency) == (PI_REQUIRES_CONFIRMATION, "USD")
    assert breaker("stripe").current_state == "closed"


def test_create_then_confirm_charges_the_card(gateway: StripeGateway) -> None:
    created = new_payment(gateway, amount=1999)
    assert created.id.startswith("pi_")
    assert (created.status, created.amount, created.amount_received) == (
        PI_REQUIRES_CONFIRMATION,
        1999,
        0,
    )
    assert created.currency == "EUR" and created.metadata["order"] == "42"

    confirmed = gateway.confirm_payment(created.id, idempotency_key=key())
    assert (confirmed.id, confirmed.status) == (created.id, PI_SUCCEEDED)
    assert confirmed.amount_received == 1999 and confirmed.failure_reason is None
    assert gateway.get_payment(created.id) == confirmed


def test_a_confirm_retried_after_success_reports_the_payment(gateway: StripeGateway) -> None:
    # The first answer was "lost": confirming again must not fail the job permanently.
    payment = paid(gateway)
    again = gateway.confirm_payment(payment.id, idempotency_key=key())
    assert (again.status, again.amount_received) == (PI_SUCCEEDED, payment.amount)


def test_a_declined_card_is_a_payment_state_and_keeps_the_breaker_closed(
    gateway: StripeGateway, circuit: pybreaker.CircuitBreaker
) -> None:
    created = new_payment(gateway, method=DECLINING_CARD)
    declined = gateway.confirm_payment(created.id, idempotency_key=key())
    assert declined.status == PI_REQUIRES_PAYMENT_METHOD
    assert declined.amount_received == 0
    assert declined.failure_reason is not None and "card_declined" in declined.failure_reason

    # A retried confirm reports the same decline instead of raising.
    assert gateway.confirm_payment(created.id, idempotency_key=key()) == declined
    # fail_max=1: a decline counted as a gateway failure would have opened it.
    assert circuit.current_state == "closed"
    assert paid(gateway).status == PI_SUCCEEDED


def test_unknown_or_invalid_requests_are_rejected_without_tripping_the_breaker(
    gateway: StripeGateway, circuit: pybreaker.CircuitBreaker
) -> None:
    with pytest.raises(GatewayRejected, match="404"):
        gateway.get_payment("pi_doesnotexist")
    with pytest.raises(GatewayRejected):
        new_payment(gateway, amount=0)
    with pytest.raises(GatewayRejected):
        new_payment(gateway, method="pm_doesnotexist")
    assert circuit.current_state == "closed"


def test_list_payments_returns_every_payment_since_a_time_across_pages(
    gateway: StripeGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = new_payment(gateway)
    # Stripe's `created` has one-second resolution.
    wait_for(lambda: int(time.time()) > before.created, timeout=3)
    since = int(time.time())
    recent = {new_payment(gateway).id, paid(gateway).id, new_payment(gateway).id}

    monkeypatch.setattr(stripe_client, "_PAGE_SIZE", 2)  # several pages from few objects
    listed = list(gateway.list_payments(created_since=since))
    assert {p.id for p in listed} >= recent
    assert before.id not in {p.id for p in listed}
    assert all(p.created >= since for p in listed)
    assert len(listed) == len({p.id for p in listed})  # no page repeats another
    found = next(p for p in listed if p.status == PI_SUCCEEDED and p.id in recent)
    assert found == gateway.get_payment(found.id)


def test_partial_refunds_are_listed_and_a_retry_does_not_refund_twice(
    gateway: StripeGateway,
) -> None:
    payment = paid(gateway, amount=1000)
    refund_key = key()
    first = gateway.create_refund(
        payment_id=payment.id,
        amount=300,
        metadata={"reason": "damaged"},
        idempotency_key=refund_key,
    )
    assert (first.status, first.amount, first.payment_id) == ("succeeded", 300, payment.id)
    assert first.metadata["reason"] == "damaged"

    retried = gateway.create_refund(
        payment_id=payment.id,
        amount=300,
        metadata={"reason": "damaged"},
        idempotency_key=refund_key,
    )
    assert retried.id == first.id
    assert gateway.list_refunds(payment_id=payment.id) == [first]

    rest = gateway.create_refund(
        payment_id=payment.id, amount=700, metadata={}, idempotency_key=key()
    )
    assert {r.id for r in gateway.list_refunds(payment_id=payment.id)} == {first.id, rest.id}
    with pytest.raises(GatewayRejected, match="0 is refundable"):
        gateway.create_refund(payment_id=payment.id, amount=1, metadata={}, idempotency_key=key())


def test_refunding_more_than_was_paid_is_rejected(
    gateway: StripeGateway, circuit: pybreaker.CircuitBreaker
) -> None:
    payment = paid(gateway, amount=1000)
    with pytest.raises(GatewayRejected, match="1000 is refundable"):
        gateway.create_refund(
            payment_id=payment.id, amount=1001, metadata={}, idempotency_key=key()
        )
    assert gateway.list_refunds(payment_id=payment.id) == []

    unpaid = new_payment(gateway)
    with pytest.raises(GatewayRejected, match="0 is refundable"):
        gateway.create_refund(payment_id=unpaid.id, amount=100, metadata={}, idempotency_key=key())
    assert gateway.list_refunds(payment_id=unpaid.id) == []
    assert circuit.current_state == "closed"


def test_a_gateway_that_never_answers_times_out(app: APIFlask, circuit_name: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never replies
        port = silent.getsockname()[1]
        settings = make_settings(
            stripe_api_base=f"http://127.0.0.1:{port}",
            stripe_secret_key="sk_test_local",
            stripe_timeout_seconds=0.5,
        )
        gw = StripeGateway(settings, circuit=lambda: own_breaker(circuit_name))
        began = time.monotonic()
        with pytest.raises(GatewayUnavailable, match="APIConnectionError"):
            gw.get_payment("pi_anything")
        assert 0.4 < time.monotonic() - began < 2


def test_missing_secret_key_is_unavailable_not_rejected(app: APIFlask, circuit_name: str) -> None:
    gw = StripeGateway(
        make_settings(stripe_secret_key="", stripe_api_base="http://127.0.0.1:1"),
        circuit=lambda: own_breaker(circuit_name, fail_max=1),
    )
    with pytest.raises(GatewayUnavailable, match="STRIPE_SECRET_KEY"):
        gw.get_payment("pi_anything")  # an operator can fix the configuration; jobs retry
    assert own_breaker(circuit_name).current_state == "closed"


RESET = 4  # seconds


def test_outage_opens_the_shared_breaker_which_recovers_after_the_reset_timeout(
    app: APIFlask, settings: Settings, private_stack: PrivateStacks, circuit_name: str
) -> None:
    server = LocalStripe(free_port())
    server.start()
    try:
        outage_app = private_stack(
            breaker_fail_max=2,
            # Long enough that restarting localstripe on a loaded CI machine cannot
            # outlast it before the "still open" check below.
            breaker_reset_seconds=RESET,
            stripe_api_base=server.url,
            stripe_secret_key="sk_test_local",
            stripe_timeout_seconds=2,
        ).app
        with outage_app.app_context():
            config = outage_app.config["SETTINGS"]
            first = StripeGateway(config, circuit=lambda: breaker(circuit_name))
            payment = new_payment(first)

            server.stop()
            for _ in range(2):
                began = time.monotonic()
                with pytest.raises(GatewayUnavailable):
                    first.get_payment(payment.id)
                assert time.monotonic() - began < config.stripe_timeout_seconds
            assert breaker(circuit_name).current_state == "open"
            opened = time.monotonic()

            server.start()  # back (and empty: localstripe forgets everything on restart)
            # Another process's gateway, with its own breaker object and Redis connection,
            # refuses too without contacting the (healthy again) server.
            other_redis = redis_client(
                settings.redis_url, settings.redis_sentinel_master, decode_responses=True
            )
            elsewhere = build_breaker(
                circuit_name, client=other_redis, fail_max=2, reset_seconds=RESET
            )
            second = StripeGateway(config, circuit=lambda: elsewhere)
            with pytest.raises(GatewayUnavailable, match="circuit open"):
                new_payment(second)
            raw = stripe.StripeClient("sk_test_local", base_addresses={"api": server.url})
            assert raw.v1.payment_intents.list().data == []  # it was never asked

            assert time.monotonic() - opened < RESET, "the machine was too slow to judge"
            # After the reset timeout the next call is the trial.
            time.sleep(max(0.0, RESET - (time.monotonic() - opened)) + 0.2)
            recovered = new_payment(second)
            assert breaker(circuit_name).current_state == "closed"
            assert first.get_payment(recovered.id) == recovered
            other_redis.close()
    finally:
        server.stop()
