"""The `Idempotency-Key` header for POST routes, as one decorator (API.md "Idempotency").

Order on a view: route, auth, input (so invalid bodies never reserve a key), `@idempotent`,
output (so what is stored is the serialised response).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar, cast

from flask import Response, g, make_response, request

from blueprints.common.openapi.marks import IDEMPOTENCY_MARK
from services.core.errors import ValidationFailed
from services.core.idempotency import (
    StoredResponse,
    complete_key,
    hold_key,
    release_key,
    request_fingerprint,
    reserve_key,
)

F = TypeVar("F", bound=Callable[..., Any])
HEADER = "Idempotency-Key"
# Response headers worth replaying; the rest (request id, rate limits) are per request.
_REPLAYED_HEADERS = ("Location", "Content-Type")


def idempotent(*, required: bool = False) -> Callable[[F], F]:
    """Replay the first response for a repeated key (see the module doc for placement)."""

    def decorator(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            sent = request.headers.get(HEADER)
            if sent is None and not required:
                return view(*args, **kwargs)
            key = (sent or "").strip()
            if not key:
                # A blank key is a client bug (an unset variable, say) whose author believes
                # the request is protected against duplicates: refuse it, never ignore it.
                raise ValidationFailed(
                    f"The {HEADER} header is required for this operation."
                    if sent is None
                    else f"The {HEADER} header is empty.",
                    errors={HEADER: ["Send a unique key (e.g. a UUID) per operation."]},
                )
            if len(key) > 255:
                raise ValidationFailed(
                    "The Idempotency-Key is too long.", errors={HEADER: ["At most 255 characters."]}
                )
            principal = g.get("principal") or f"ip:{request.remote_addr}"
            fingerprint = request_fingerprint(request.method, request.path, request.get_data())
            stored = reserve_key(principal, key, request.method, request.path, fingerprint)
            if stored is not None:
                return _replay(stored)
            hold_key(principal, key)
            try:
                response = make_response(view(*args, **kwargs))
            except Exception:
                release_key(principal, key)
                raise
            if response.status_code >= 500 or response.status_code in (409, 429):
                release_key(principal, key)  # not a final answer: let the client retry
            else:
                complete_key(principal, key, _snapshot(response))
            return response

        # blueprints.common.openapi documents the header and its 409/422 from this mark.
        setattr(wrapper, IDEMPOTENCY_MARK, required)
        return cast(F, wrapper)

    return decorator


def _snapshot(response: Response) -> StoredResponse:
    headers = {k: response.headers[k] for k in _REPLAYED_HEADERS if k in response.headers}
    return StoredResponse(response.status_code, response.get_data(as_text=True), headers)


def _replay(stored: StoredResponse) -> Response:
    response = Response(stored.body, status=stored.status)
    for name, value in stored.headers.items():
        response.headers[name] = value
    response.headers["Idempotent-Replayed"] = "true"
    return response
