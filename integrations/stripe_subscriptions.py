"""Customers, plans and subscriptions at Stripe: the part of `StripeGateway` that bills
teams monthly or yearly. localstripe ignores idempotency keys, so a subscription records
ours in its metadata and a retry finds the one its earlier attempt created; plans and
their products have fixed ids, so a concurrent creation collides instead of duplicating.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import stripe
from stripe.params import PlanCreateParams

from integrations.payments import GatewayRejected, GatewaySubscription
from integrations.stripe_client import (
    IDEMPOTENCY_METADATA_KEY,
    StripeBase,
    is_conflict,
    is_missing,
    metadata_of,
    object_ref,
    refusals,
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
        customer_id=object_ref(data.get("customer")),
        plan_id=object_ref(plan),
        current_period_end=int(period_end) if period_end else None,
        cancel_at_period_end=bool(data.get("cancel_at_period_end")),
        metadata=metadata_of(data),
    )


class StripeSubscriptions(StripeBase):
    """Create customers, ensure plans, create and change subscriptions."""

    def create_customer(
        self, *, email: str, name: str, metadata: dict[str, str], idempotency_key: str
    ) -> str:
        """Create a customer; returns its id."""
        with refusals("creating a customer"):
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
        with refusals("ensuring a plan"):
            try:
                plan = self._send(plans.retrieve, plan_id)
            except stripe.StripeError as exc:
                if not is_missing(exc):
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
            if not is_conflict(exc):
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
            if not is_conflict(exc):
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
        with refusals("creating a subscription"):
            for data in self._pages(
                self._client.v1.subscriptions.list, {"customer": customer_id, "status": "all"}
            ):
                if metadata_of(data).get(IDEMPOTENCY_METADATA_KEY) == idempotency_key:
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
        with refusals("changing a subscription's plan"):
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
        with refusals("updating a subscription"):
            updated = self._send(
                self._client.v1.subscriptions.update,
                subscription_id,
                params={"cancel_at_period_end": cancel},
                options={"idempotency_key": idempotency_key},
            )
        return _subscription(updated.to_dict())

    def get_subscription(self, subscription_id: str) -> GatewaySubscription:
        """The subscription as the gateway sees it now."""
        with refusals("fetching a subscription"):
            found = self._send(self._client.v1.subscriptions.retrieve, subscription_id)
        return _subscription(found.to_dict())
