"""`PaymentGateway` over Stripe's API, or over localstripe (a fake Stripe) in dev and tests.

Every HTTP call:
- is bounded by STRIPE_TIMEOUT_SECONDS and never retried by the library: our jobs retry
  with backoff, and the job ledger knows what was already attempted;
- goes through the shared `breaker("stripe")`, where only an unavailable gateway (no
  connection, timeout, 5xx, 429) counts as a failure. A declined card or a refused request
  comes from a healthy gateway and must never open the circuit for every other payment;
- carries our idempotency key when it writes.

Failures surface as `GatewayUnavailable` (retry later) or `GatewayRejected` (the same call
cannot succeed). A card decline is not an error: `confirm_payment` returns the payment in
`requires_payment_method` with `failure_reason` set.

localstripe ignores idempotency keys, so retried writes are made safe here too: payments
are created unconfirmed (a duplicate moves no money), a confirm that finds the intent
already confirmed reports its state, and refunds and subscriptions record the key in their
metadata (`idempotency_key`) so a retry finds the object its earlier attempt created.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

import pybreaker
import stripe
from flask import current_app
from stripe._base_address import BaseAddresses  # the type only; not re-exported by stripe
from stripe.params import PaymentIntentCreateParams, PaymentIntentListParams, PlanCreateParams

from config import Settings
from integrations.breaker import breaker
from integrations.payments import (
    PI_REQUIRES_CONFIRMATION,
    PI_REQUIRES_PAYMENT_METHOD,
    PI_SUCCEEDED,
    GatewayEvent,
    GatewayPayment,
    GatewayRefund,
    GatewayRejected,
    GatewaySubscription,
    GatewayUnavailable,
    InvalidWebhook,
    PaymentGateway,
)

T = TypeVar("T")
P = ParamSpec("P")
IDEMPOTENCY_METADATA_KEY = "idempotency_key"
_PAGE_SIZE = 100
_SETTLED_REFUNDS = frozenset({"failed", "canceled"})


class _Refused:
    """A Stripe error from a healthy gateway, carried out of the breaker uncounted."""

    def __init__(self, error: stripe.StripeError) -> None:
        self.error = error


def _is_outage(exc: stripe.StripeError) -> bool:
    """Whether the error says the gateway itself is unavailable (a breaker failure)."""
    if isinstance(exc, stripe.APIConnectionError | stripe.RateLimitError):
        return True  # refused/reset connections and timeouts arrive as APIConnectionError
    status = exc.http_status
    return isinstance(exc, stripe.APIError) and (status is None or status >= 500)


def _describe(exc: BaseException | None) -> str:
    if not isinstance(exc, stripe.StripeError):
        return f"{type(exc).__name__}: {exc}"
    code = f" {exc.code}" if exc.code else ""
    return f"{type(exc).__name__} ({exc.http_status}{code}): {exc.user_message or exc}"


@contextmanager
def _refusals(what: str) -> Iterator[None]:
    """Turn a refusal left unhandled inside the block into our error types."""
    try:
        yield
    except stripe.StripeError as exc:
        if exc.http_status == 409:
            # Stripe: another request with this idempotency key or on this object is in
            # flight. Nothing is wrong with the request; a later attempt will get through.
            raise GatewayUnavailable(f"Stripe busy while {what}: {_describe(exc)}") from exc
        raise GatewayRejected(f"Stripe refused {what}: {_describe(exc)}") from exc


def _is_missing(exc: stripe.StripeError) -> bool:
    return isinstance(exc, stripe.InvalidRequestError) and exc.http_status == 404


def _is_conflict(exc: stripe.StripeError) -> bool:
    # Stripe answers 400 resource_already_exists for a taken custom id; localstripe 409.
    return exc.http_status == 409 or exc.code == "resource_already_exists"


def _id(value: Any) -> str:
    """The id of a field that is either an id or an expanded object."""
    if isinstance(value, Mapping):
        return str(value.get("id") or "")
    return str(value or "")


def _metadata(data: Mapping[str, Any]) -> dict[str, str]:
    return {str(k): str(v) for k, v in (data.get("metadata") or {}).items()}


def _payment(data: Mapping[str, Any]) -> GatewayPayment:
    status = str(data["status"])
    received = data.get("amount_received")
    if received is None:  # localstripe does not report it; Stripe always does
        received = data["amount"] if status == PI_SUCCEEDED else 0
    error = data.get("last_payment_error") or None
    failure = None
    if error and status != PI_SUCCEEDED:
        code = error.get("decline_code") or error.get("code") or "payment_failed"
        failure = f"{code}: {error.get('message') or 'the payment was not accepted'}"
    return GatewayPayment(
        id=str(data["id"]),
        status=status,
        amount=int(data["amount"]),
        amount_received=int(received),
        currency=str(data["currency"]).upper(),
        failure_reason=failure,
        metadata=_metadata(data),
        created=int(data.get("created") or 0),
        invoice_id=_object_id(data.get("invoice")),
    )


def _object_id(value: Any) -> str | None:
    """An expandable field's id, whether the gateway sent the id or the whole object."""
    if isinstance(value, Mapping):
        return str(value["id"]) if value.get("id") else None
    return str(value) if value else None


def _refund(data: Mapping[str, Any]) -> GatewayRefund:
    return GatewayRefund(
        id=str(data["id"]),
        status=str(data["status"]),
        amount=int(data["amount"]),
        payment_id=_id(data.get("payment_intent")),
        failure_reason=data.get("failure_reason"),
        metadata=_metadata(data),
    )


def _subscription(data: Mapping[str, Any]) -> GatewaySubscription:
    items = (data.get("items") or {}).get("data") or [{}]
    item = items[0]
    # Newer Stripe API versions keep the plan/price and the period on the item only;
    # localstripe (and older versions) also have them on the subscription.
    plan = item.get("plan") or item.get("price") or data.get("plan")
    period_end = item.get("current_period_end") or data.get("current_period_end")
    return GatewaySubscription(
        id=str(data["id"]),
        status=str(data["status"]),
        customer_id=_id(data.get("customer")),
        plan_id=_id(plan),
        current_period_end=int(period_end) if period_end else None,
        cancel_at_period_end=bool(data.get("cancel_at_period_end")),
        metadata=_metadata(data),
    )


def _signed_at(signature_header: str) -> int:
    """The `t=` timestamp of a Stripe-Signature header (already verified to exist)."""
    for part in signature_header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            return int(value)
    raise ValueError("no timestamp in the signature header")


class StripeGateway:
    """The payment gateway over `stripe.StripeClient` (see the module docstring)."""

    def __init__(
        self, settings: Settings, *, circuit: Callable[[], pybreaker.CircuitBreaker] | None = None
    ) -> None:
        """`circuit` returns the breaker to use (default: the shared `breaker("stripe")`).

        It is looked up per call because `breaker()` hands each thread its own object.
        """
        base: BaseAddresses = {"api": settings.stripe_api_base} if settings.stripe_api_base else {}
        self._client = stripe.StripeClient(
            settings.stripe_secret_key or "unset",
            base_addresses=base or None,
            http_client=stripe.RequestsClient(timeout=settings.stripe_timeout_seconds),
            max_network_retries=0,
        )
        self._configured = bool(settings.stripe_secret_key)
        self._circuit = circuit or functools.partial(breaker, "stripe")
        # A custom API base means a local Stripe-compatible server (localstripe): leave out
        # what it does not accept (see `create_payment` and `list_payments`).
        self._local = bool(settings.stripe_api_base)
        self._webhook_secret = settings.stripe_webhook_secret
        self._tolerance = settings.stripe_webhook_tolerance_seconds

    def _send(self, request: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`request(*args, **kwargs)` through the breaker; a refusal re-raises Stripe's error."""
        if not self._configured:
            raise GatewayUnavailable("STRIPE_SECRET_KEY is not configured")

        def attempt() -> T | _Refused:
            try:
                return request(*args, **kwargs)
            except stripe.StripeError as exc:
                if _is_outage(exc):
                    raise  # counts towards the breaker
                return _Refused(exc)

        try:
            outcome = self._circuit().call(attempt)
        except pybreaker.CircuitBreakerError as exc:
            # Either this call's failure just tripped the circuit (its cause is the
            # context), or the circuit was open and Stripe was not contacted at all.
            cause = f"; last error: {_describe(exc.__context__)}" if exc.__context__ else ""
            raise GatewayUnavailable(f"Stripe circuit open ({exc}){cause}") from exc
        except stripe.StripeError as exc:
            raise GatewayUnavailable(f"Stripe unavailable: {_describe(exc)}") from exc
        if isinstance(outcome, _Refused):
            raise outcome.error
        return outcome

    def _pages(self, list_page: Callable[..., Any], params: dict[str, Any]) -> Iterator[Any]:
        """Every object of a Stripe list, one breaker-guarded request per page."""
        params = {**params, "limit": _PAGE_SIZE}
        while True:
            page = self._send(list_page, params=params).to_dict()
            yield from page["data"]
            if not page.get("has_more") or not page["data"]:
                return
            params = {**params, "starting_after": page["data"][-1]["id"]}

    # Payments

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
        """Create an unconfirmed card PaymentIntent: nothing is charged until `confirm_payment`."""
        params: PaymentIntentCreateParams = {
            "amount": amount,
            "currency": currency.lower(),
            "payment_method": payment_method,
            "metadata": dict(metadata),
        }
        # localstripe refuses `description` and `automatic_payment_methods` (and needs neither).
        if description and self._local:
            params["metadata"] = {**metadata, "description": description}
        elif description:
            params["description"] = description
        if not self._local:
            # Confirmed server-side: without this Stripe would demand a return_url in case
            # the customer picked a redirect-based method; ours are cards.
            params["automatic_payment_methods"] = {"enabled": True, "allow_redirects": "never"}
        with _refusals("creating a payment"):
            intent = self._send(
                self._client.v1.payment_intents.create,
                params=params,
                options={"idempotency_key": idempotency_key},
            )
        return _payment(intent.to_dict())

    def confirm_payment(self, payment_id: str, *, idempotency_key: str) -> GatewayPayment:
        """Charge the payment; a decline returns it in `requires_payment_method`, not an error."""
        retrieve = self._client.v1.payment_intents.retrieve
        with _refusals("confirming a payment"):
            try:
                intent = self._send(
                    self._client.v1.payment_intents.confirm,
                    payment_id,
                    options={"idempotency_key": idempotency_key},
                )
            except stripe.CardError:
                # Declined: the intent now records why (last_payment_error).
                intent = self._send(retrieve, payment_id)
            except stripe.InvalidRequestError as exc:
                if _is_missing(exc):
                    raise
                # Not confirmable: most likely an earlier attempt of this job confirmed it
                # and its answer was lost (localstripe cannot replay it by idempotency key).
                # Report the state it reached; a request that really was bad stays one.
                intent = self._send(retrieve, payment_id)
                reached = _payment(intent.to_dict())
                if reached.status == PI_REQUIRES_CONFIRMATION or (
                    reached.status == PI_REQUIRES_PAYMENT_METHOD and not reached.failure_reason
                ):
                    raise
                return reached
        return _payment(intent.to_dict())

    def get_payment(self, payment_id: str) -> GatewayPayment:
        """The payment as the gateway sees it now."""
        with _refusals("fetching a payment"):
            intent = self._send(self._client.v1.payment_intents.retrieve, payment_id)
        return _payment(intent.to_dict())

    def list_payments(self, *, created_since: int) -> Iterator[GatewayPayment]:
        """Every payment created at or after the Unix time, fetched page by page lazily."""
        params: PaymentIntentListParams = {}
        if not self._local:  # localstripe rejects the filter; we filter below anyway
            params["created"] = {"gte": created_since}
        with _refusals("listing payments"):
            for data in self._pages(self._client.v1.payment_intents.list, dict(params)):
                payment = _payment(data)
                if payment.created >= created_since:
                    yield payment

    # Refunds

    def create_refund(
        self, *, payment_id: str, amount: int, metadata: dict[str, str], idempotency_key: str
    ) -> GatewayRefund:
        """Refund part or all of a payment; a retry with the same key returns the same refund."""
        payment = self.get_payment(payment_id)
        refunds = self._refunds_of(payment_id) if payment.amount_received else []
        for refund in refunds:
            if refund.metadata.get(IDEMPOTENCY_METADATA_KEY) == idempotency_key:
                return refund  # an earlier attempt made it; its answer was lost
        # Checked here as well as by Stripe: localstripe refunds any amount, even more
        # than was paid, and on an unpaid intent it fails with a 500.
        refundable = payment.amount_received - sum(
            r.amount for r in refunds if r.status not in _SETTLED_REFUNDS
        )
        if not 0 < amount <= refundable:
            raise GatewayRejected(
                f"cannot refund {amount} of payment {payment_id}: {refundable} is refundable"
            )
        with _refusals("refunding a payment"):
            created = self._send(
                self._client.v1.refunds.create,
                params={
                    "payment_intent": payment_id,
                    "amount": amount,
                    "metadata": {**metadata, IDEMPOTENCY_METADATA_KEY: idempotency_key},
                },
                options={"idempotency_key": idempotency_key},
            )
        return _refund(created.to_dict())

    def list_refunds(self, *, payment_id: str) -> list[GatewayRefund]:
        """Every refund of the payment, newest first."""
        if self._local and not self.get_payment(payment_id).amount_received:
            return []  # localstripe answers 500 for an intent that was never charged
        return self._refunds_of(payment_id)

    def _refunds_of(self, payment_id: str) -> list[GatewayRefund]:
        with _refusals("listing refunds"):
            found = self._pages(self._client.v1.refunds.list, {"payment_intent": payment_id})
            return [_refund(data) for data in found]

    # Subscriptions

    def create_customer(
        self, *, email: str, name: str, metadata: dict[str, str], idempotency_key: str
    ) -> str:
        """Create a customer; returns its id."""
        with _refusals("creating a customer"):
            customer = self._send(
                self._client.v1.customers.create,
                params={"email": email, "name": name, "metadata": dict(metadata)},
                options={"idempotency_key": idempotency_key},
            )
        return str(customer.id)

    def ensure_plan(
        self, *, plan_id: str, name: str, amount: int, currency: str, interval: str
    ) -> str:
        """Create the monthly/yearly plan `plan_id` (and its product) unless it exists.

        A plan's price cannot change: an existing plan with another amount, currency or
        interval is refused rather than silently billing the old price.
        """
        plans = self._client.v1.plans
        with _refusals("ensuring a plan"):
            try:
                plan = self._send(plans.retrieve, plan_id)
            except stripe.StripeError as exc:
                if not _is_missing(exc):
                    raise
                plan = self._create_plan(plan_id, name, amount, currency.lower(), interval)
        data = plan.to_dict()
        found = (data.get("amount"), str(data.get("currency")).upper(), data.get("interval"))
        if found != (amount, currency.upper(), interval):
            raise GatewayRejected(
                f"plan {plan_id} exists as {found}, not {(amount, currency.upper(), interval)}; "
                "use a new plan id for a new price"
            )
        return plan_id

    def _create_plan(
        self, plan_id: str, name: str, amount: int, currency: str, interval: str
    ) -> stripe.Plan:
        # Fixed ids make a concurrent or retried creation collide instead of duplicating.
        product_id = f"prod_{plan_id}"
        try:
            self._send(self._client.v1.products.create, params={"id": product_id, "name": name})
        except stripe.StripeError as exc:
            if not _is_conflict(exc):
                raise
        params: PlanCreateParams = {
            "id": plan_id,
            "product": product_id,
            "amount": amount,
            "currency": currency,
            "interval": interval,
        }
        try:
            return self._send(self._client.v1.plans.create, params=params)
        except stripe.StripeError as exc:
            if not _is_conflict(exc):
                raise
        return self._send(self._client.v1.plans.retrieve, plan_id)

    def create_subscription(
        self,
        *,
        customer_id: str,
        plan_id: str,
        payment_method: str,
        metadata: dict[str, str],
        idempotency_key: str,
    ) -> GatewaySubscription:
        """Subscribe the customer, paying with `payment_method` (made the customer's default).

        The first invoice is charged at once: `active` if it was paid, `incomplete` if the
        card was declined. A retry with the same key returns the subscription it created.
        """
        with _refusals("creating a subscription"):
            for data in self._pages(
                self._client.v1.subscriptions.list, {"customer": customer_id, "status": "all"}
            ):
                if _metadata(data).get(IDEMPOTENCY_METADATA_KEY) == idempotency_key:
                    return _subscription(data)
            # The customer's default payment method rather than the subscription's own:
            # localstripe only charges invoices through the customer's default.
            method = self._send(
                self._client.v1.payment_methods.attach,
                payment_method,
                params={"customer": customer_id},
                options={"idempotency_key": f"{idempotency_key}:attach"},
            )
            self._send(
                self._client.v1.customers.update,
                customer_id,
                params={"invoice_settings": {"default_payment_method": method.id}},
                options={"idempotency_key": f"{idempotency_key}:default-method"},
            )
            subscription = self._send(
                self._client.v1.subscriptions.create,
                params={
                    "customer": customer_id,
                    "items": [{"plan": plan_id}],
                    "metadata": {**metadata, IDEMPOTENCY_METADATA_KEY: idempotency_key},
                },
                options={"idempotency_key": idempotency_key},
            )
        return _subscription(subscription.to_dict())

    def change_subscription_plan(
        self, subscription_id: str, *, plan_id: str, idempotency_key: str
    ) -> GatewaySubscription:
        """Switch the subscription's only item to `plan_id`; proration is the gateway's."""
        subscriptions = self._client.v1.subscriptions
        with _refusals("changing a subscription's plan"):
            data = self._send(subscriptions.retrieve, subscription_id).to_dict()
            if _subscription(data).plan_id == plan_id:
                return _subscription(data)  # already there (e.g. a retried job)
            item_id = data["items"]["data"][0]["id"]
            updated = self._send(
                subscriptions.update,
                subscription_id,
                params={"items": [{"id": item_id, "plan": plan_id}]},
                options={"idempotency_key": idempotency_key},
            )
        return _subscription(updated.to_dict())

    def set_cancel_at_period_end(
        self, subscription_id: str, cancel: bool, *, idempotency_key: str
    ) -> GatewaySubscription:
        """Cancel at the end of the paid period (or take that back with `cancel=False`)."""
        with _refusals("updating a subscription"):
            updated = self._send(
                self._client.v1.subscriptions.update,
                subscription_id,
                params={"cancel_at_period_end": cancel},
                options={"idempotency_key": idempotency_key},
            )
        return _subscription(updated.to_dict())

    def get_subscription(self, subscription_id: str) -> GatewaySubscription:
        """The subscription as the gateway sees it now."""
        with _refusals("fetching a subscription"):
            found = self._send(self._client.v1.subscriptions.retrieve, subscription_id)
        return _subscription(found.to_dict())

    # Webhooks

    def parse_webhook(self, payload: bytes, signature_header: str) -> GatewayEvent:
        """Verify a webhook's signature and age (both ways) and return its event."""
        if not self._webhook_secret:
            # An empty secret would make every signature computable by anyone.
            raise InvalidWebhook("STRIPE_WEBHOOK_SECRET is not configured")
        try:
            event = stripe.Webhook.construct_event(
                payload, signature_header, self._webhook_secret, tolerance=self._tolerance
            )
            # stripe-python only refuses old timestamps; one from the future is as suspect.
            if _signed_at(signature_header) > time.time() + self._tolerance:
                raise InvalidWebhook("webhook timestamp is too far in the future")
            data = event.to_dict()
            obj = data["data"]["object"]
            return GatewayEvent(
                id=str(data["id"]),
                type=str(data["type"]),
                object_type=str(obj["object"]),
                object_id=str(obj["id"]),
                created=int(data["created"]),
                payload=data,
            )
        except stripe.SignatureVerificationError as exc:
            raise InvalidWebhook(f"webhook signature does not verify: {exc}") from exc
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            # ValueError: not UTF-8 or not JSON; the others: JSON that is not an event.
            raise InvalidWebhook(f"webhook payload is not a Stripe event: {exc!r}") from exc


@functools.lru_cache(maxsize=4)
def _gateway_for(settings: Settings) -> StripeGateway:
    return StripeGateway(settings)


# A forked worker child must not share the parent's pooled HTTP connections.
os.register_at_fork(after_in_child=_gateway_for.cache_clear)


def get_gateway() -> PaymentGateway:
    """The gateway configured by the current app's settings (one instance per settings)."""
    return _gateway_for(current_app.config["SETTINGS"])
