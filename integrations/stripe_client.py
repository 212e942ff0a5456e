"""The transport under `StripeGateway` (integrations/stripe_gateway.py): the client, every
call through the shared breaker, paging, and what a Stripe error means.

Every HTTP call:
- is bounded by STRIPE_TIMEOUT_SECONDS and never retried by the library: our jobs retry
  with backoff, and the job ledger knows what was already attempted;
- goes through the shared `breaker("stripe")`, where only an unavailable gateway (no
  connection, timeout, 5xx, 429) counts as a failure. A declined card or a refused request
  comes from a healthy gateway and must never open the circuit for every other payment.

Failures surface as `GatewayUnavailable` (retry later) or `GatewayRejected` (the same call
cannot succeed). The gateway's parts (stripe_payments.py, stripe_subscriptions.py,
stripe_webhooks.py) extend `StripeBase`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

import pybreaker
import stripe
from stripe._base_address import BaseAddresses  # the type only; not re-exported by stripe

from config import Settings
from integrations.breaker import breaker
from integrations.payments import GatewayRejected, GatewayUnavailable

T = TypeVar("T")
P = ParamSpec("P")
IDEMPOTENCY_METADATA_KEY = "idempotency_key"
_PAGE_SIZE = 100


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
def refusals(what: str) -> Iterator[None]:
    """Turn a refusal left unhandled inside the block into our error types."""
    try:
        yield
    except stripe.StripeError as exc:
        if exc.http_status == 409:
            # Stripe: another request with this idempotency key or on this object is in
            # flight. Nothing is wrong with the request; a later attempt will get through.
            raise GatewayUnavailable(f"Stripe busy while {what}: {_describe(exc)}") from exc
        raise GatewayRejected(f"Stripe refused {what}: {_describe(exc)}") from exc


def is_missing(exc: stripe.StripeError) -> bool:
    return isinstance(exc, stripe.InvalidRequestError) and exc.http_status == 404


def is_conflict(exc: stripe.StripeError) -> bool:
    # Stripe answers 400 resource_already_exists for a taken custom id; localstripe 409.
    return exc.http_status == 409 or exc.code == "resource_already_exists"


def object_ref(value: Any) -> str:
    """The id of a field that is either an id or an expanded object."""
    if isinstance(value, Mapping):
        return str(value.get("id") or "")
    return str(value or "")


def metadata_of(data: Mapping[str, Any]) -> dict[str, str]:
    return {str(k): str(v) for k, v in (data.get("metadata") or {}).items()}


def optional_id(value: Any) -> str | None:
    """An expandable field's id, whether the gateway sent the id or the whole object."""
    if isinstance(value, Mapping):
        return str(value["id"]) if value.get("id") else None
    return str(value) if value else None


class StripeBase:
    """The client and its breaker-guarded calls that each part of the gateway uses."""

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
