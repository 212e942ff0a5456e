"""Response headers in the document: defined once (components/headers), referenced where sent.

Where the server sends what (README "API contract"):
- X-Request-ID: every response;
- RateLimit-Limit, -Remaining, -Reset: every response of a rate-limited operation (all but
  the exempt ones) once the limit counted the request, so not promised on each;
- Retry-After: every 429 and 503; the 409 of an idempotent operation whose first request
  is still running; wherever else a view declares it (an export not ready yet);
- Location: every 202 that answers with a job (the job to follow: API.md's rule for
  background work), and every 3xx; a 201 where the view declares it;
- Idempotent-Replayed: any stored answer of an idempotent operation (its successes and
  the errors its service raises: 403, 404, 410, 422);
- X-Cache and the like: declared by their view (`@bp.doc(responses=...)` or
  `@operation_doc`, with `header_ref(...)`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, Final

from blueprints.common.openapi.errors import METHODS, rate_limited
from blueprints.common.openapi.marks import IDEMPOTENCY_MARK
from blueprints.common.openapi.schemas import REF_PREFIX

HEADERS: Final[dict[str, dict[str, Any]]] = {
    "X-Request-ID": {
        "description": "This request's id: the client's own `X-Request-ID` when it sent a "
        "sane one (1-64 of `A-Za-z0-9._:-`), else a new one. Problem bodies carry it too.",
        "required": True,
        "schema": {"type": "string", "maxLength": 64},
    },
    "RateLimit-Limit": {
        "description": "Requests allowed in the rate-limit window closest to running out.",
        "schema": {"type": "integer", "minimum": 0},
    },
    "RateLimit-Remaining": {
        "description": "Requests left in that window.",
        "schema": {"type": "integer", "minimum": 0},
    },
    "RateLimit-Reset": {
        "description": "Seconds until that window starts afresh.",
        "schema": {"type": "integer", "minimum": 0},
    },
    "Retry-After": {
        "description": "Seconds to wait before trying again.",
        "required": True,
        "schema": {"type": "integer", "minimum": 0},
    },
    "Retry-After-If-Retryable": {
        "description": "Seconds to wait before trying again, when waiting can help: the "
        "first request with this Idempotency-Key is still running, the file is not ready.",
        "schema": {"type": "integer", "minimum": 0},
    },
    "Location": {
        "description": "Where to go next: the job to follow (202), the new resource (201), "
        "or the short-lived link to the file (302).",
        "required": True,
        "schema": {"type": "string"},
    },
    "Idempotent-Replayed": {
        "description": "`true` when this is the stored answer to an earlier request with the "
        "same Idempotency-Key (nothing was done again).",
        "schema": {"type": "string", "enum": ["true"]},
    },
    "X-Cache": {
        "description": "`hit` when the team-wide part came from the cache, `miss` when it "
        "was computed for this request.",
        "required": True,
        "schema": {"type": "string", "enum": ["hit", "miss"]},
    },
    "Content-Disposition": {
        "description": "`attachment`, with the file's name.",
        "required": True,
        "schema": {"type": "string"},
    },
}
HEADERS_REF: Final = "#/components/headers/"
_RATE_LIMIT = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")
# What a view can answer once its key is held (the guards and the body's validation come
# first; 409, 429 and 5xx are never stored: blueprints.common.idempotency).
_REPLAYED_ERRORS = ("403", "404", "410", "422")


def header_ref(component: str) -> dict[str, str]:
    """A reference to one of HEADERS (views use it in their own response docs)."""
    if component not in HEADERS:
        raise KeyError(f"{component} is not in components/headers (blueprints.common.openapi)")
    return {"$ref": HEADERS_REF + component}


def document_headers(
    spec: dict[str, Any], views: dict[tuple[str, str], Callable[..., Any]]
) -> dict[str, Any]:
    """Reference the headers each response carries; define them once in components."""
    spec.setdefault("components", {})["headers"] = copy.deepcopy(HEADERS)
    for path, operations in spec.get("paths", {}).items():
        for method in METHODS:
            operation = operations.get(method)
            view = views.get((path, method))
            if operation is None:
                continue
            limited = rate_limited(view)
            idempotent = view is not None and hasattr(view, IDEMPOTENCY_MARK)
            for status, response in operation.get("responses", {}).items():
                headers = response.setdefault("headers", {})
                job = status == "202" and _answers_a_job(response, spec)
                sent = _sent_with(status, limited=limited, idempotent=idempotent, job=job)
                for name, component in sent:
                    headers.setdefault(name, header_ref(component))
                if status[0] == "3":
                    response.pop("content", None)  # a redirect's body is nothing to read
                if not response.get("content", True):
                    response.pop("content")
    return spec


def _sent_with(status: str, *, limited: bool, idempotent: bool, job: bool) -> list[tuple[str, str]]:
    """(header, its component) for the headers every response of this kind carries."""
    sent = [("X-Request-ID", "X-Request-ID")]
    if limited:
        sent += [(name, name) for name in _RATE_LIMIT]
    if status in ("429", "503"):
        sent.append(("Retry-After", "Retry-After"))
    if status == "409" and idempotent:
        sent.append(("Retry-After", "Retry-After-If-Retryable"))
    if status[0] == "3" or job:
        sent.append(("Location", "Location"))
    if idempotent and (status[0] == "2" or status in _REPLAYED_ERRORS):
        sent.append(("Idempotent-Replayed", "Idempotent-Replayed"))
    return sent


def _answers_a_job(response: dict[str, Any], spec: dict[str, Any]) -> bool:
    schema = response.get("content", {}).get("application/json", {}).get("schema", {})
    ref = schema.get("$ref", "")
    if ref.startswith(REF_PREFIX):  # the 202 bodies are components by now (.schemas)
        schema = spec["components"]["schemas"][ref.removeprefix(REF_PREFIX)]
    return "job" in schema.get("properties", {})
