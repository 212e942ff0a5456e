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

from flask import current_app

from config import Settings
from integrations.payments import PaymentGateway
from integrations.stripe_payments import StripePayments
from integrations.stripe_subscriptions import StripeSubscriptions
from integrations.stripe_webhooks import StripeWebhooks


class StripeGateway(StripePayments, StripeSubscriptions, StripeWebhooks):
    """The payment gateway over `stripe.StripeClient` (see the module docstring): payments
    and refunds (stripe_payments.py), customers, plans and subscriptions
    (stripe_subscriptions.py), webhooks (stripe_webhooks.py), over the breaker-guarded
    transport of stripe_client.py."""


@functools.lru_cache(maxsize=4)
def _gateway_for(settings: Settings) -> StripeGateway:
    return StripeGateway(settings)


# A forked worker child must not share the parent's pooled HTTP connections.
os.register_at_fork(after_in_child=_gateway_for.cache_clear)


def get_gateway() -> PaymentGateway:
    """The gateway configured by the current app's settings (one instance per settings)."""
    return _gateway_for(current_app.config["SETTINGS"])
