"""Stripe webhooks: verify a delivery's signature and age, and read its event (the part of
`StripeGateway` that the webhook endpoint calls)."""

from __future__ import annotations

import time

import stripe

from integrations.payments import GatewayEvent, InvalidWebhook
from integrations.stripe_client import StripeBase


def _signed_at(signature_header: str) -> int:
    """The `t=` timestamp of a Stripe-Signature header (already verified to exist)."""
    for part in signature_header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            return int(value)
    raise ValueError("no timestamp in the signature header")


class StripeWebhooks(StripeBase):
    """Turn a signed webhook delivery into a `GatewayEvent`."""

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
