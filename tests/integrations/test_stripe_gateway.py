"""The Stripe gateway against localstripe over real HTTP, and its breaker in real Redis.

localstripe keeps every object in memory for the whole session, so tests use fresh ids
(plans) and fresh idempotency keys instead of flushing it between tests.
"""

from __future__ import annotations

import hmac
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from hashlib import sha256
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pybreaker
import pytest
import redis as redis_lib
import stripe
from apiflask import APIFlask

from config import Settings
from extensions import redis
from integrations import stripe_gateway
from integrations.breaker import breaker, build_breaker
from integrations.payments import (
    PI_REQUIRES_CONFIRMATION,
    PI_REQUIRES_PAYMENT_METHOD,
    PI_SUCCEEDED,
    GatewayPayment,
    GatewayRejected,
    GatewaySubscription,
    GatewayUnavailable,
    InvalidWebhook,
)
from integrations.stripe_gateway import StripeGateway, get_gateway
from scripts.devservices import free_port
from tests.support import LocalStripe, PrivateStacks, make_settings, wait_for

DECLINING_CARD = "pm_card_chargeCustomerFail"  # 4000000000000341: attaches, every charge fails


def key() -> str:
    return f"test-{uuid.uuid4()}"


@pytest.fixture
def circuit_name() -> Iterator[str]:
    """A breaker name of its own, so no test here opens the app's `stripe` circuit."""
    name = f"test-stripe-{uuid.uuid4().hex[:12]}"
    yield name
    keys = list(redis.client.scan_iter(f"breaker:{name}:*"))
    if keys:
        redis.client.delete(*keys)


def own_breaker(
    name: str, fail_max: int = 5, reset_seconds: float = 30
) -> pybreaker.CircuitBreaker:
    return build_breaker(name, client=redis.client, fail_max=fail_max, reset_seconds=reset_seconds)


@pytest.fixture
def circuit(app: APIFlask, circuit_name: str) -> pybreaker.CircuitBreaker:
    """A breaker that one counted failure would open: proof that a test counted none."""
    return own_breaker(circuit_name, fail_max=1)


@pytest.fixture
def gateway(settings: Settings, circuit: pybreaker.CircuitBreaker) -> StripeGateway:
    return StripeGateway(settings, circuit=lambda: circuit)


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

    monkeypatch.setattr(stripe_gateway, "_PAGE_SIZE", 2)  # several pages from few objects
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
            other_redis = redis_lib.Redis.from_url(settings.redis_url, decode_responses=True)
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


# Webhooks

SECRET = "whsec_test"  # the test settings' STRIPE_WEBHOOK_SECRET


def signature(body: bytes, at: int | None = None, secret: str = SECRET) -> str:
    """A Stripe-Signature header: HMAC-SHA256 of "{t}.{body}", the way Stripe signs."""
    t = int(time.time()) if at is None else at
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, sha256).hexdigest()
    return f"t={t},v1={mac}"


def event_body(**overrides: Any) -> bytes:
    event = {
        "id": "evt_123",
        "object": "event",
        "type": "payment_intent.succeeded",
        "created": int(time.time()),
        "data": {"object": {"id": "pi_123", "object": "payment_intent", "amount": 1000}},
        **overrides,
    }
    return json.dumps(event).encode()


def test_a_signed_webhook_parses_into_an_event(gateway: StripeGateway) -> None:
    body = event_body()
    event = gateway.parse_webhook(body, signature(body))
    assert (event.id, event.type) == ("evt_123", "payment_intent.succeeded")
    assert (event.object_type, event.object_id) == ("payment_intent", "pi_123")
    assert event.payload["data"]["object"]["amount"] == 1000


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(lambda body: signature(body, secret="whsec_other"), id="wrong-secret"),
        pytest.param(lambda body: signature(body + b" "), id="other-body"),
        pytest.param(lambda body: signature(body, at=int(time.time()) - 301), id="too-old"),
        pytest.param(lambda body: signature(body, at=int(time.time()) + 301), id="future"),
        pytest.param(lambda body: "", id="no-header"),
        pytest.param(lambda body: "t=abc,v1=00", id="garbage"),
    ],
)
def test_a_webhook_that_does_not_verify_is_refused(gateway: StripeGateway, header: Any) -> None:
    body = event_body()
    with pytest.raises(InvalidWebhook):
        gateway.parse_webhook(body, header(body))


def test_a_signed_payload_that_is_not_an_event_is_refused(gateway: StripeGateway) -> None:
    for body in (b"not json", b"[1, 2]", json.dumps({"id": "evt_1", "object": "event"}).encode()):
        with pytest.raises(InvalidWebhook):
            gateway.parse_webhook(body, signature(body))


def test_webhooks_need_a_configured_secret(app: APIFlask) -> None:
    gw = StripeGateway(make_settings(stripe_webhook_secret=""))
    body = event_body()
    with pytest.raises(InvalidWebhook, match="STRIPE_WEBHOOK_SECRET"):
        gw.parse_webhook(body, signature(body, secret=""))


class _Inbox(BaseHTTPRequestHandler):
    received: list[tuple[bytes, str]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((body, self.headers.get("Stripe-Signature", "")))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        """Keep the test output free of access-log lines."""


def test_webhooks_sent_by_localstripe_verify(app: APIFlask, circuit_name: str) -> None:
    _Inbox.received.clear()
    server = LocalStripe(free_port())
    inbox = ThreadingHTTPServer(("127.0.0.1", 0), _Inbox)
    threading.Thread(target=inbox.serve_forever, daemon=True).start()
    server.start()
    try:
        server.configure_webhook(
            f"http://127.0.0.1:{inbox.server_address[1]}/hook", SECRET, ["payment_intent.succeeded"]
        )
        settings = make_settings(
            stripe_api_base=server.url,
            stripe_secret_key="sk_test_local",
            stripe_webhook_secret=SECRET,
        )
        gw = StripeGateway(settings, circuit=lambda: own_breaker(circuit_name))
        payment = paid(gw)
        assert payment.status == PI_SUCCEEDED

        received = wait_for(lambda: list(_Inbox.received), timeout=10)  # sent after ~1 s
        event = gw.parse_webhook(*received[0])
        assert (event.type, event.object_type) == ("payment_intent.succeeded", "payment_intent")
        assert event.object_id == payment.id

        server.flush()  # forgets every object
        with pytest.raises(GatewayRejected, match="404"):
            gw.get_payment(payment.id)
    finally:
        server.stop()
        inbox.shutdown()
        inbox.server_close()
