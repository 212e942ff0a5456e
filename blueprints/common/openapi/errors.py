"""Errors in the document: one place documents them for every route.

APIFlask documents 401, 404 and 422 on its own, as `application/json` bodies of its own
shape. What the API really answers (API.md, blueprints/common/problems.py) is RFC 9457
problem+json, and a few more statuses that any route of a kind can produce. Rather than
repeat them on ~90 views, this spec processor adds them by what an operation is:

- every rate-limited operation (all but the exempt ones): 429;
- every operation under /api/: 503 (a dependency is down);
- authenticated ones: 400 (both credentials sent), 401 and 403 (an API key's scope, or a
  role, or not an operator);
- ones with a body: 413 (too large) and 422; a JSON body also 400 (malformed JSON) and 415
  (not JSON), which a form upload never answers;
- ones whose query parameters a model validates: 422;
- `@idempotent` ones: the `Idempotency-Key` header, 409 (the first request still runs)
  and 422 (the key reused with another body).

Statuses only some routes produce (a duplicate SKU's 409, say) stay on those routes, in
`@bp.doc(responses=...)`; this processor only gives them the problem+json body.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask_limiter.util import get_qualified_name

from blueprints.common.openapi.marks import IDEMPOTENCY_MARK
from blueprints.common.problems import PROBLEM_MIMETYPE
from blueprints.common.ratelimits import limiter

PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "An RFC 9457 problem; `errors` maps a field to its messages.",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"},
        "errors": {
            "type": "object",
            "additionalProperties": {"type": "array", "items": {"type": "string"}},
        },
        "request_id": {"type": ["string", "null"]},
    },
}
_DESCRIPTIONS = {
    400: "Malformed request (a body that is not valid JSON, both Authorization and X-API-Key)",
    401: "Authentication error",
    403: "Forbidden (role, API-key scope or operator only)",
    404: "Not found",
    409: "Conflict",
    413: "Request body too large",
    415: "Unsupported media type (send application/json)",
    422: "Validation error",
    429: "Rate limited (see Retry-After)",
    503: "A dependency is unavailable (see Retry-After)",
}
METHODS = ("get", "put", "post", "patch", "delete")
IDEMPOTENCY_KEY_DESCRIPTION = (
    "A unique key per intent (a UUID, say), kept for 24 hours and scoped to the caller. "
    "Sending it again with the same body replays the first answer (status and body, with "
    "`Idempotent-Replayed: true`) instead of acting twice; the same key with another body is "
    "a 422, and while the first request is still running a 409 (retry after Retry-After)."
)


def document_errors(
    spec: dict[str, Any],
    views: dict[tuple[str, str], Callable[..., Any]],
    uuid_arguments: dict[str, set[str]],
) -> dict[str, Any]:
    """Give every error response the Problem body and add the statuses of its kind."""
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    schemas["Problem"] = PROBLEM_SCHEMA
    for name in ("HTTPError", "ValidationError"):  # APIFlask's shapes, which we never send
        schemas.pop(name, None)
    for path, operations in spec.get("paths", {}).items():
        for method in METHODS:
            operation = operations.get(method)
            if operation is None:
                continue
            view = views.get((path, method))
            _document_uuid_parameters(operation, uuid_arguments.get(path, set()))
            for status in _statuses_of(path, operation, view):
                operation.setdefault("responses", {}).setdefault(str(status), {})
            if "requestBody" in operation:
                # APIFlask leaves it optional, but a JSON body is always needed (400 without).
                operation["requestBody"]["required"] = True
            if view is not None and hasattr(view, IDEMPOTENCY_MARK):
                _document_idempotency_key(operation, required=getattr(view, IDEMPOTENCY_MARK))
            for status, response in operation.get("responses", {}).items():
                if status[0] in "45":
                    response.setdefault("description", _DESCRIPTIONS.get(int(status), "Error"))
                    response["content"] = {PROBLEM_MIMETYPE: {"schema": PROBLEM_REF}}
    return spec


def _statuses_of(path: str, operation: dict[str, Any], view: Callable[..., Any] | None) -> set[int]:
    statuses: set[int] = set()
    if rate_limited(view):
        statuses.add(429)
    if path.startswith("/api/"):
        statuses.add(503)
    if operation.get("security"):
        statuses |= {400, 401, 403}
    if "requestBody" in operation:
        statuses |= {413, 422}
        if "application/json" in operation["requestBody"].get("content", {}):
            statuses |= {400, 415}
    if any(location == "query" for _, location in getattr(view, "_spec", {}).get("args", [])):
        statuses.add(422)  # its query model refused the parameters
    if view is not None and hasattr(view, IDEMPOTENCY_MARK):
        statuses |= {409, 422}
    return statuses


def rate_limited(view: Callable[..., Any] | None) -> bool:
    """Whether requests to the view count against a rate limit (all but exempt views)."""
    return view is not None and not limiter.is_exempt(get_qualified_name(view))


def _document_idempotency_key(operation: dict[str, Any], *, required: bool) -> None:
    parameters = operation.setdefault("parameters", [])
    if any(p.get("name") == "Idempotency-Key" for p in parameters):
        return
    parameters.append(
        {
            "in": "header",
            "name": "Idempotency-Key",
            "required": required,
            "description": IDEMPOTENCY_KEY_DESCRIPTION,
            "schema": {"type": "string", "minLength": 1, "maxLength": 255},
        }
    )


def _document_uuid_parameters(operation: dict[str, Any], names: set[str]) -> None:
    """`<uuid:x>` rules take only UUIDs (anything else is a 404 before the view runs)."""
    for parameter in operation.get("parameters", []):
        if parameter.get("in") == "path" and parameter.get("name") in names:
            parameter["schema"] = {"type": "string", "format": "uuid"}
