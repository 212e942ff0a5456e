"""Payments and refunds at Stripe: the part of `StripeGateway` that moves money.

A card decline is not an error: `confirm_payment` returns the payment in
`requires_payment_method` with `failure_reason` set. localstripe ignores idempotency keys,
so retried writes are made safe here too: payments are created unconfirmed (a duplicate
moves no money), a confirm that finds the intent already confirmed reports its state, and
refunds record the key in their metadata so a retry finds the refund its earlier attempt
created.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import stripe
from stripe.params import PaymentIntentCreateParams, PaymentIntentListParams

from integrations.payments import (
    PI_REQUIRES_CONFIRMATION,
    PI_REQUIRES_PAYMENT_METHOD,
    PI_SUCCEEDED,
    GatewayPayment,
    GatewayRefund,
    GatewayRejected,
)
from integrations.stripe_client import (
    IDEMPOTENCY_METADATA_KEY,
    StripeBase,
    is_missing,
    metadata_of,
    object_ref,
    optional_id,
    refusals,
)

_SETTLED_REFUNDS = frozenset({"failed", "canceled"})


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
        metadata=metadata_of(data),
        created=int(data.get("created") or 0),
        invoice_id=optional_id(data.get("invoice")),
    )


def _refund(data: Mapping[str, Any]) -> GatewayRefund:
    return GatewayRefund(
        id=str(data["id"]),
        status=str(data["status"]),
        amount=int(data["amount"]),
        payment_id=object_ref(data.get("payment_intent")),
        failure_reason=data.get("failure_reason"),
        metadata=metadata_of(data),
    )


class StripePayments(StripeBase):
    """Create, confirm, read and list payments; refund them and list their refunds."""

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
        with refusals("creating a payment"):
            intent = self._send(
                self._client.v1.payment_intents.create,
                params=params,
                options={"idempotency_key": idempotency_key},
            )
        return _payment(intent.to_dict())

    def confirm_payment(self, payment_id: str, *, idempotency_key: str) -> GatewayPayment:
        """Charge the payment; a decline returns it in `requires_payment_method`, not an error."""
        retrieve = self._client.v1.payment_intents.retrieve
        with refusals("confirming a payment"):
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
                if is_missing(exc):
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
        with refusals("fetching a payment"):
            intent = self._send(self._client.v1.payment_intents.retrieve, payment_id)
        return _payment(intent.to_dict())

    def list_payments(self, *, created_since: int) -> Iterator[GatewayPayment]:
        """Every payment created at or after the Unix time, fetched page by page lazily."""
        params: PaymentIntentListParams = {}
        if not self._local:  # localstripe rejects the filter; we filter below anyway
            params["created"] = {"gte": created_since}
        with refusals("listing payments"):
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
        with refusals("refunding a payment"):
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
        with refusals("listing refunds"):
            found = self._pages(self._client.v1.refunds.list, {"payment_intent": payment_id})
            return [_refund(data) for data in found]
