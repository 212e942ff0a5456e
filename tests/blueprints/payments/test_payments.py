"""Payments against a real Stripe-compatible server (localstripe) over HTTP and a real
worker: exactly one charge per Idempotency-Key, declines, refunds, webhooks, outages."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import delete, func, select

from config import Settings
from extensions import db
from integrations.breaker import breaker
from integrations.stripe_gateway import get_gateway
from models import GatewayEvent, IdempotencyKey, Payment
from scripts.devservices import free_port
from tests.factories import auth_headers, make_user, personal_team
from tests.support import (
    LOGS,
    LocalStripe,
    Mailbox,
    PrivateStacks,
    Worker,
    fetch_job,
    problem_body,
    running_worker,
    wait_for,
    wait_job,
)
from tests.support.proxy import SlowProxy

VISA = "pm_card_visa"


def pay(client: FlaskClient, team_id: Any, headers: Any, key: str, **body: Any) -> Any:
    payload = {"amount": 1250, "currency": "usd", "description": "Order 42", "payment_method": VISA}
    payload.update(body)
    return client.post(
        f"/api/v1/teams/{team_id}/payments", json=payload,
        headers={**headers, "Idempotency-Key": key},
    )  # fmt: skip


def gateway_charges(payment_id: str) -> list[Any]:
    """Succeeded intents at the gateway that belong to our payment."""
    since = int(time.time()) - 3600
    return [
        p for p in get_gateway().list_payments(created_since=since)
        if p.metadata.get("payment_id") == payment_id and p.status == "succeeded"
    ]  # fmt: skip


def payments_count() -> int:
    db.session.rollback()
    return int(db.session.scalar(select(func.count()).select_from(Payment)) or 0)


def payment_row(payment_id: str) -> Payment:
    db.session.rollback()
    row = db.session.scalar(
        select(Payment).where(Payment.id == uuid.UUID(payment_id))
        .execution_options(populate_existing=True)
    )  # fmt: skip
    assert row is not None
    return row


def test_same_key_twice_is_one_payment_and_one_charge(
    client: FlaskClient, worker: Worker, mailbox: Mailbox
) -> None:
    user = make_user()
    team_id, headers = personal_team(user), auth_headers(user)
    first = pay(client, team_id, headers, "order-42")
    assert first.status_code == 202
    body = first.get_json()
    assert body["payment"]["status"] == "pending" and body["payment"]["amount"] == 1250
    assert body["payment"]["currency"] == "USD"
    assert first.headers["Location"] == f"/api/v1/jobs/{body['job']['id']}"

    second = pay(client, team_id, headers, "order-42")  # a double click, a retried request
    assert second.status_code == 202 and second.get_json() == body
    assert second.headers["Idempotent-Replayed"] == "true"
    wait_job(body["job"]["id"], "succeeded", describe=worker.describe)

    payment_id = body["payment"]["id"]
    assert payments_count() == 1
    assert len(gateway_charges(payment_id)) == 1
    shown = client.get(f"/api/v1/teams/{team_id}/payments/{payment_id}", headers=headers)
    assert shown.get_json()["payment"]["status"] == "succeeded"
    receipt = mailbox.wait_for(user.email, "receipt")
    assert "12.50 USD" in Mailbox.text_of(receipt)

    other = pay(client, team_id, headers, "order-42", amount=9999)
    assert "Idempotency-Key" in problem_body(other, 422)["errors"]
    assert payments_count() == 1


def test_payment_needs_a_key_and_a_sane_body(client: FlaskClient) -> None:
    user = make_user()
    team_id, headers = personal_team(user), auth_headers(user)
    no_key = client.post(f"/api/v1/teams/{team_id}/payments", json={"amount": 1, "currency": "USD",
                         "payment_method": VISA}, headers=headers)  # fmt: skip
    assert "Idempotency-Key" in problem_body(no_key, 422)["errors"]
    cases: list[tuple[dict[str, Any], str]] = [
        ({"amount": 0}, "amount"), ({"amount": -5}, "amount"), ({"amount": 12.5}, "amount"),
        ({"amount": "100"}, "amount"), ({"currency": "XXX"}, "currency"),
        ({"currency": "dollars"}, "currency"),
    ]  # fmt: skip
    for bad, field in cases:
        response = pay(client, team_id, headers, f"bad-{uuid.uuid4()}", **bad)
        assert field in problem_body(response, 422)["errors"], bad
    assert payments_count() == 0


def test_declined_card_fails_with_the_reason(client: FlaskClient, worker: Worker) -> None:
    user = make_user()
    team_id, headers = personal_team(user), auth_headers(user)
    declining = _declining_payment_method()
    body = pay(client, team_id, headers, "declined-1", payment_method=declining).get_json()
    wait_job(body["job"]["id"], "succeeded", describe=worker.describe)  # the job did its work
    row = payment_row(body["payment"]["id"])
    assert row.status == "failed"
    assert row.failure_reason and "declin" in row.failure_reason.lower()
    refund = client.post(
        f"/api/v1/teams/{team_id}/payments/{row.id}/refunds", json={},
        headers={**headers, "Idempotency-Key": "r-1"},
    )  # fmt: skip
    problem_body(refund, 409)


def _declining_payment_method() -> str:
    # Declines when charged (4000000000000341), on localstripe as on Stripe's test mode.
    return "pm_card_chargeCustomerFail"


def test_refunds_never_exceed_what_was_captured(client: FlaskClient, worker: Worker) -> None:
    user = make_user()
    team_id, headers = personal_team(user), auth_headers(user)
    body = pay(client, team_id, headers, "refund-me", amount=5000).get_json()
    wait_job(body["job"]["id"], "succeeded", describe=worker.describe)
    url = f"/api/v1/teams/{team_id}/payments/{body['payment']['id']}/refunds"

    too_much = client.post(url, json={"amount": 5001}, headers={**headers, "Idempotency-Key": "r0"})
    assert "amount" in problem_body(too_much, 422)["errors"]
    part = client.post(url, json={"amount": 2000, "reason": "damaged"},
                       headers={**headers, "Idempotency-Key": "r1"})  # fmt: skip
    assert part.status_code == 202
    # While the first refund is pending, only the rest can still be refunded.
    over = client.post(url, json={"amount": 3001}, headers={**headers, "Idempotency-Key": "r2"})
    problem_body(over, 422)
    wait_job(part.get_json()["job"]["id"], "succeeded", describe=worker.describe)
    row = payment_row(body["payment"]["id"])
    assert (row.status, row.amount_refunded) == ("partially_refunded", 2000)

    rest = client.post(url, json={}, headers={**headers, "Idempotency-Key": "r3"})
    assert rest.get_json()["refund"]["amount"] == 3000
    wait_job(rest.get_json()["job"]["id"], "succeeded", describe=worker.describe)
    row = payment_row(body["payment"]["id"])
    assert (row.status, row.amount_refunded) == ("refunded", 5000)
    detail = client.get(f"/api/v1/teams/{team_id}/payments/{row.id}", headers=headers).get_json()
    assert [r["status"] for r in detail["payment"]["refunds"]] == ["succeeded", "succeeded"]
    assert len(get_gateway().list_refunds(payment_id=str(row.provider_payment_id))) == 2


def test_listing_filters_by_status_and_pages(client: FlaskClient, worker: Worker) -> None:
    user = make_user()
    team_id, headers = personal_team(user), auth_headers(user)
    jobs = [pay(client, team_id, headers, f"list-{i}").get_json()["job"]["id"] for i in range(3)]
    for job_id in jobs:
        wait_job(job_id, "succeeded", describe=worker.describe)
    page = client.get(f"/api/v1/teams/{team_id}/payments?limit=2", headers=headers).get_json()
    assert len(page["items"]) == 2 and page["next_cursor"]
    rest = client.get(
        f"/api/v1/teams/{team_id}/payments?limit=2&cursor={page['next_cursor']}", headers=headers
    ).get_json()
    assert len(rest["items"]) == 1 and rest["next_cursor"] is None
    none = client.get(f"/api/v1/teams/{team_id}/payments?status=failed", headers=headers)
    assert none.get_json()["items"] == []
    future = client.get(
        f"/api/v1/teams/{team_id}/payments", query_string={"from": "2999-01-01T00:00:00Z"},
        headers=headers,
    )  # fmt: skip
    assert future.get_json()["items"] == []


# --- webhooks ------------------------------------------------------------------------------


def signed(payload: dict[str, Any], secret: str, timestamp: int | None = None) -> tuple[bytes, str]:
    body = json.dumps(payload).encode()
    t = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return body, f"t={t},v1={digest}"


def post_webhook(client: FlaskClient, body: bytes, signature: str) -> Any:
    return client.post(
        "/api/v1/webhooks/stripe", data=body,
        headers={"Stripe-Signature": signature, "Content-Type": "application/json"},
    )  # fmt: skip


def intent_event(intent_id: str, event_id: str | None = None) -> dict[str, Any]:
    return {
        "id": event_id or f"evt_{uuid.uuid4().hex[:16]}", "object": "event",
        "type": "payment_intent.succeeded", "created": int(time.time()),
        "data": {"object": {"id": intent_id, "object": "payment_intent", "status": "succeeded"}},
    }  # fmt: skip


def test_webhooks_with_bad_signatures_or_stale_timestamps_are_refused(
    client: FlaskClient, settings: Settings
) -> None:
    event = intent_event("pi_unknown")
    body, good = signed(event, settings.stripe_webhook_secret)
    _, wrong = signed(event, "whsec_not_ours")
    _, stale = signed(event, settings.stripe_webhook_secret, int(time.time()) - 3600)
    for signature in (wrong, stale, "", "t=1,v1=abc"):
        problem_body(post_webhook(client, body, signature), 400)
    tampered = body.replace(b"pi_unknown", b"pi_tampered")
    problem_body(post_webhook(client, tampered, good), 400)
    db.session.rollback()
    assert db.session.scalar(select(func.count()).select_from(GatewayEvent)) == 0


def test_a_lost_result_converges_from_the_webhook_once(
    client: FlaskClient, worker: Worker, settings: Settings
) -> None:
    """The gateway charged but our side never heard (e.g. the result was lost)."""
    user = make_user()
    team_id = personal_team(user)
    gateway = get_gateway()
    payment = Payment(id=uuid.uuid4(), team_id=team_id, created_by_id=user.id, amount=700,
                      currency="EUR", status="processing", payment_method=VISA,
                      idempotency_key="lost-1")  # fmt: skip
    intent = gateway.create_payment(amount=700, currency="EUR", payment_method=VISA,
                                    description=None, metadata={"payment_id": str(payment.id)},
                                    idempotency_key="lost-1")  # fmt: skip
    gateway.confirm_payment(intent.id, idempotency_key="lost-1-confirm")
    payment.provider_payment_id = intent.id
    db.session.add(payment)
    db.session.commit()

    event = intent_event(intent.id)
    body, signature = signed(event, settings.stripe_webhook_secret)
    first = post_webhook(client, body, signature)
    assert first.status_code == 200 and first.get_json() == {"received": True, "duplicate": False}
    again = post_webhook(client, body, signature)  # the gateway retries: same event id
    assert again.get_json() == {"received": True, "duplicate": True}

    wait_for(lambda: payment_row(str(payment.id)).status == "succeeded", 20, worker.describe)
    db.session.rollback()
    stored = db.session.scalar(select(GatewayEvent).where(GatewayEvent.id == event["id"]))
    assert stored is not None and stored.processed_at is not None
    from models import AuditLog

    transitions = db.session.scalar(
        select(func.count()).where(AuditLog.action == "payment.succeeded",
                                   AuditLog.subject_id == str(payment.id))
    )  # fmt: skip
    assert transitions == 1


# --- faults --------------------------------------------------------------------------------


@pytest.fixture
def slow_gateway(
    settings: Settings, private_stack: PrivateStacks
) -> Iterator[tuple[SlowProxy, Settings]]:
    """The gateway behind a proxy that can hold answers back, and a broker of our own so
    only this test's worker (which uses the proxy) can pick up the charge."""
    proxy = SlowProxy(settings.stripe_api_base, free_port())
    proxy.start()
    try:
        yield proxy, private_stack(keep=KEEP, stripe_api_base=proxy.url, broker=True).settings
    finally:
        proxy.stop()


KEEP = (
    "database_url",
    "redis_url",
    "redis_sentinel_master",
    "smtp_url",
    "stripe_secret_key",
    "stripe_webhook_secret",
)


def test_worker_killed_during_the_charge_leaves_exactly_one_charge(
    client: FlaskClient, slow_gateway: tuple[SlowProxy, Settings]
) -> None:
    proxy, settings = slow_gateway
    user = make_user()
    team_id, headers = personal_team(user), auth_headers(user)
    # The gateway confirms (money moves) but its answer is held back: kill the worker then.
    proxy.hold, proxy.hold_seconds = re.compile(r"/confirm"), 5.0
    with running_worker(settings, LOGS / "charge-kill-worker.log", concurrency=1) as worker:
        body = pay(client, team_id, headers, "kill-1").get_json()
        wait_for(lambda: proxy.requests_matching("/confirm"), 20, worker.describe)
        owner = fetch_job(body["job"]["id"]).worker
        assert owner is not None
        os.kill(int(owner.rpartition(":")[2]), signal.SIGKILL)
        proxy.hold = None
        done = wait_job(body["job"]["id"], "succeeded", timeout=60, describe=worker.describe)
    assert done.attempts == 2
    assert payment_row(body["payment"]["id"]).status == "succeeded"
    assert len(gateway_charges(body["payment"]["id"])) == 1
    assert len(proxy.requests_matching("/confirm")) == 1  # the redelivery only looked


def test_gateway_outage_keeps_payments_pending_then_charges_once(
    client: FlaskClient, private_stack: PrivateStacks
) -> None:
    # Our own Redis (broker, breaker state; also on a RabbitMQ test run) and our own
    # gateway, so the outage and the open breaker stay inside this test.
    own_redis = private_stack.redis()
    gateway_server = LocalStripe(free_port())  # not started: the gateway is down
    stack = private_stack(
        keep=KEEP, redis_url=own_redis.url(0), celery_broker_url="",
        stripe_api_base=gateway_server.url, breaker_fail_max=2, breaker_reset_seconds=2,
        payments_max_attempts=40, retry_backoff_base=0.2, retry_backoff_max=1,
    )  # fmt: skip
    outage, outage_app = stack.settings, stack.app
    user = make_user()
    team_id, headers = personal_team(user), auth_headers(user)
    try:
        with running_worker(outage, LOGS / "outage-worker.log", concurrency=1) as worker:
            body = pay(client, team_id, headers, "outage-1")
            assert body.status_code == 202  # accepted although the gateway is down
            job_id, payment_id = body.get_json()["job"]["id"], body.get_json()["payment"]["id"]
            wait_for(lambda: fetch_job(job_id).attempts >= 4, 30, worker.describe)
            assert fetch_job(job_id).status in ("retrying", "running")
            assert payment_row(payment_id).status == "pending"
            with outage_app.app_context():
                # Opened by the worker's failures, seen here through Redis ("half-open" only
                # while the worker's trial call after each reset timeout is in flight).
                assert breaker("stripe").current_state in ("open", "half-open")

            gateway_server.start()
            attempts = wait_job(job_id, "succeeded", timeout=60, describe=worker.describe).attempts
        assert attempts > 4  # it kept retrying through the outage
        assert payment_row(payment_id).status == "succeeded"
        with outage_app.app_context():  # its gateway, not the session's
            assert len(gateway_charges(payment_id)) == 1
    finally:
        gateway_server.stop()
        own_redis.stop()


def test_a_retry_whose_first_answer_was_never_stored_gets_the_same_payment(
    client: FlaskClient,
) -> None:
    # The payment committed, then the process (or the database) died before the API's
    # idempotency record stored the answer: the client's retry must get that payment
    # back, not a second one and not a conflict it cannot resolve.
    user = make_user()
    team_id, headers = personal_team(user), auth_headers(user)
    first = pay(client, team_id, headers, "order-lost-answer")
    assert first.status_code == 202
    db.session.execute(delete(IdempotencyKey))  # the answer was never recorded
    db.session.commit()

    again = pay(client, team_id, headers, "order-lost-answer")
    assert again.status_code == 202, again.get_json()
    assert again.get_json()["payment"]["id"] == first.get_json()["payment"]["id"]
    assert again.get_json()["job"]["id"] == first.get_json()["job"]["id"]
    assert payments_count() == 1

    db.session.execute(delete(IdempotencyKey))
    db.session.commit()
    other = pay(client, team_id, headers, "order-lost-answer", amount=777)
    assert problem_body(other, 409)["detail"].startswith("A payment with this Idempotency-Key")
    assert payments_count() == 1
