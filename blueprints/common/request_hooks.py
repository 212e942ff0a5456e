"""Per-request plumbing: the request id, content-type enforcement, access logs, metrics."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask, Request, Response, g, request
from werkzeug.exceptions import BadRequest

from blueprints.common import http_metrics
from blueprints.common.problems import problem
from logs import bind_request_id, get_logger

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
    """Say plainly that a body is malformed JSON (Flask only says so in debug mode)."""

    def on_json_loading_failed(self, e: ValueError | None) -> Any:
        raise BadRequest("The request body is not valid JSON.")


def register_request_hooks(app: Flask) -> None:
    app.request_class = JSONRequest

    @app.before_request
    def _start() -> Response | None:
        incoming = request.headers.get(REQUEST_ID_HEADER, "")
        g.request_id = incoming if _VALID_REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
        g.started_at = time.perf_counter()
        bind_request_id(g.request_id)
        return _require_json_body()

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
            path=request.path,
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
    from flask import current_app

    return current_app.view_functions.get(request.endpoint or "")
