"""The payment gateway behind a small interface; Stripe (or localstripe) implements it.

Everything our services need from a gateway, in our own types, so the rest of the code
never touches `stripe` objects. Every call has a timeout, passes our idempotency key and
goes through the shared `breaker("stripe")`; failures arrive as three exceptions:
`CardDeclined` never happens at this level (a decline is a payment state, see
`GatewayPayment.failure_reason`), `GatewayUnavailable` is worth retrying later,
`GatewayRejected` is not.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

# Stripe's PaymentIntent states, as the gateway reports them.
PI_SUCCEEDED = "succeeded"
PI_PROCESSING = "processing"
PI_REQUIRES_ACTION = "requires_action"
PI_REQUIRES_PAYMENT_METHOD = "requires_payment_method"  # after a decline (failure_reason set)
PI_REQUIRES_CONFIRMATION = "requires_confirmation"  # created, not yet confirmed
PI_CANCELED = "canceled"


class GatewayUnavailable(Exception):
    """Network failure, timeout, 5xx, rate limit or an open breaker: retry later."""


class GatewayRejected(Exception):
    """The gateway refused the request as invalid: retrying the same call cannot help.

    A job that meets it fails at once: the tasks that call the gateway declare it
    permanent (`job_task(..., permanent=(GatewayRejected,))`)."""


class InvalidWebhook(Exception):
    """A webhook whose signature or timestamp does not verify."""


@dataclass(frozen=True)
class GatewayPayment:
    id: str
    status: str
    amount: int
    amount_received: int
    currency: str  # upper-case ISO-4217
    failure_reason: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    created: int = 0
    invoice_id: str | None = None  # set when a subscription invoice made this payment


@dataclass(frozen=True)
class GatewayRefund:
    id: str
    status: str  # pending | succeeded | failed | canceled
    amount: int
    payment_id: str
    failure_reason: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class GatewaySubscription:
    id: str
    status: str  # incomplete | trialing | active | past_due | canceled | unpaid
    customer_id: str
    plan_id: str
    current_period_end: int | None
    cancel_at_period_end: bool
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class GatewayEvent:
    id: str
    type: str  # e.g. payment_intent.succeeded, customer.subscription.updated
    object_type: str  # payment_intent | refund | charge | subscription | invoice ...
    object_id: str
    created: int
    payload: dict[str, Any]


class PaymentGateway(Protocol):
    """What the services need from a payment provider."""

    def create_payment(
        self,
        *,
        amount: int,
        currency: str,
        payment_method: str,
        description: str | None,
        metadata: dict[str, str],
        idempotency_key: str,
    ) -> GatewayPayment:
        """Create an UNCONFIRMED payment (no money moves yet)."""

    def confirm_payment(self, payment_id: str, *, idempotency_key: str) -> GatewayPayment:
        """Confirm (charge); a decline comes back as a payment with `failure_reason`."""

    def get_payment(self, payment_id: str) -> GatewayPayment: ...

    def list_payments(self, *, created_since: int) -> Iterator[GatewayPayment]:
        """Every payment created at or after the Unix time (for reconciliation)."""

    def create_refund(
        self, *, payment_id: str, amount: int, metadata: dict[str, str], idempotency_key: str
    ) -> GatewayRefund: ...

    def list_refunds(self, *, payment_id: str) -> list[GatewayRefund]: ...

    def create_customer(
        self, *, email: str, name: str, metadata: dict[str, str], idempotency_key: str
    ) -> str:
        """Create a customer; returns its id."""

    def ensure_plan(
        self, *, plan_id: str, name: str, amount: int, currency: str, interval: str
    ) -> str:
        """Make sure a recurring plan/price exists at the gateway; returns its id."""

    def create_subscription(
        self,
        *,
        customer_id: str,
        plan_id: str,
        payment_method: str,
        metadata: dict[str, str],
        idempotency_key: str,
    ) -> GatewaySubscription: ...

    def change_subscription_plan(
        self, subscription_id: str, *, plan_id: str, idempotency_key: str
    ) -> GatewaySubscription:
        """Switch plans; proration is whatever the gateway computes."""

    def set_cancel_at_period_end(
        self, subscription_id: str, cancel: bool, *, idempotency_key: str
    ) -> GatewaySubscription: ...

    def get_subscription(self, subscription_id: str) -> GatewaySubscription: ...

    def parse_webhook(self, payload: bytes, signature_header: str) -> GatewayEvent:
        """Verify the signature and timestamp tolerance; raise InvalidWebhook otherwise."""
