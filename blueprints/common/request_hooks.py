"""Per-request plumbing: the request id, content-type enforcement, access logs, metrics."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask, Request, Response, current_app, g, request
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge

from blueprints.common import http_metrics, json_body
from blueprints.common.problems import problem
from logs import bind_request_id, get_logger, redact_secrets
from services.core.errors import ValidationFailed

REQUEST_ID_HEADER = "X-Request-ID"
# Echo a client's id only if it is a sane token (ids end up in logs, headers and the
# 64-character `request_id` columns of jobs and audit_logs). Matched with fullmatch:
# `$` would also accept a trailing newline.
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
log = get_logger("http")
F = TypeVar("F", bound=Callable[..., Any])


def accepts_any_content(view: F) -> F:
    """Mark a view that reads a non-JSON body itself (webhooks, form posts)."""
    view._accepts_any_content = True  # type: ignore[attr-defined]
    return view


class JSONRequest(Request):
    """Request bodies parsed by the rules of `json_body` (Flask's own `json_module` is the
    app's provider, which knows none of them), and plain words when one is broken (Flask
    only says why in debug mode)."""

    _parsed: tuple[Any, dict[str, list[str]]] | None = None

    def on_json_loading_failed(self, e: ValueError | None) -> Any:
        if isinstance(e, json_body.UnreadableJSON):
            raise BadRequest(str(e))
        raise BadRequest("The request body is not valid JSON.")

    def get_json(self, force: bool = False, silent: bool = False, cache: bool = True) -> Any:
        if not (force or self.is_json):
            return None if silent else self.on_json_loading_failed(None)
        try:
            value, problems = self._parse()
        except ValueError as exc:
            return None if silent else self.on_json_loading_failed(exc)
        if silent:  # a peek (the rate limiter's): unusable values read as no body
            return None if problems else value
        if not isinstance(value, dict):
            # Every body of ours is an object; APIFlask would take `null` for `{}` (and
            # a refund of `null` for "refund everything").
            raise ValidationFailed(
                json_body.NOT_AN_OBJECT, errors={"_schema": ["Send a JSON object: {...}."]}
            )
        if problems:
            raise ValidationFailed("Some values cannot be stored.", errors=problems)
        return value

    def _parse(self) -> tuple[Any, dict[str, list[str]]]:
        """The body and its unstorable values, parsed once per request."""
        if self._parsed is None:
            raw = self.get_data()
            limit = self.max_content_length
            # Without a Content-Length (chunked), Werkzeug stops reading at the limit
            # instead of refusing the body: one more byte means it was too large.
            at_limit = self.content_length is None and limit is not None and len(raw) >= limit
            if at_limit and self.environ["wsgi.input"].read(1):
                raise RequestEntityTooLarge()
            value = json_body.loads(raw)
            self._parsed = (value, json_body.unstorable(raw, value))
        return self._parsed


def register_request_hooks(app: Flask) -> None:
    app.request_class = JSONRequest

    @app.before_request
    def _start() -> Response | None:
        incoming = request.headers.get(REQUEST_ID_HEADER, "")
        g.request_id = incoming if _VALID_REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
        g.started_at = time.perf_counter()
        bind_request_id(g.request_id)
        return _refuse_nul() or _require_json_body()

    # Registered before the extensions, so (after_request runs in reverse) this runs last.
    @app.after_request
    def _finish(response: Response) -> Response:
        response.headers[REQUEST_ID_HEADER] = g.get("request_id", "")
        _normalise_rate_limit_headers(response)
        elapsed = time.perf_counter() - g.get("started_at", time.perf_counter())
        http_metrics.observe(request, response, elapsed)
        elapsed_ms = elapsed * 1000
        log.info(
            "request",
            method=request.method,
            path=redact_secrets(request.path),  # invitation links carry their token
            status=response.status_code,
            duration_ms=round(elapsed_ms, 2),
        )
        return response


def _normalise_rate_limit_headers(response: Response) -> None:
    """RateLimit-Reset in seconds (as the IETF draft says), Retry-After only on a 429."""
    limiter_retry_after = response.headers.pop("X-RateLimit-Retry-After", None)
    if response.status_code == 429 and limiter_retry_after is not None:
        response.headers["Retry-After"] = str(max(1, int(limiter_retry_after)))
    reset = response.headers.get("RateLimit-Reset")
    if reset and reset.isdigit() and int(reset) > 1_000_000_000:  # an epoch timestamp
        response.headers["RateLimit-Reset"] = str(max(0, int(reset) - int(time.time())))


def _refuse_nul() -> Response | None:
    """NUL in a header or query parameter: refused here, not a 500 when PostgreSQL refuses
    to store or compare it (an Idempotency-Key, a User-Agent, an audit-log filter...)."""
    for name, value in request.headers.items():
        if "\x00" in value:
            return problem(400, f"The {name} header must not contain NUL characters.")
    if b"%00" in request.query_string or b"\x00" in request.query_string:
        bad = {k for k, v in request.args.items(multi=True) if "\x00" in k or "\x00" in v}
        return problem(
            422,
            "Query parameters must not contain NUL characters.",
            type_slug="validation-error",
            errors={k: ["Must not contain NUL characters."] for k in sorted(bad)},
        )
    return None


def _require_json_body() -> Response | None:
    """415 for a body that is not JSON on a route that only takes JSON."""
    if request.method not in _BODY_METHODS:
        return None
    has_body = bool(request.content_length) or "chunked" in request.headers.get(
        "Transfer-Encoding", ""
    )
    if not has_body:
        return None
    view = request.endpoint and request.url_rule and _view_function()
    if view is not None and getattr(view, "_accepts_any_content", False):
        return None
    mimetype = request.mimetype or ""
    if mimetype == "application/json" or mimetype.endswith("+json"):
        return None
    return problem(415, "Send the request body as application/json.")


def _view_function() -> Callable[..., Any] | None:
    return current_app.view_functions.get(request.endpoint or "")
