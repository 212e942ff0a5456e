"""Stripe webhooks: signatures verified by the gateway, and events localstripe really sends."""

from __future__ import annotations

import hmac
import json
import threading
import time
from hashlib import sha256
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from apiflask import APIFlask

from integrations.payments import (
    PI_SUCCEEDED,
    GatewayRejected,
    InvalidWebhook,
)
from integrations.stripe_gateway import StripeGateway
from scripts.devservices import free_port
from tests.integrations.stripe_helpers import own_breaker, paid
from tests.support import LocalStripe, make_settings, wait_for

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
