"""The OpenAPI document tells the truth about errors: one place documents them for every route.

APIFlask documents 401, 404 and 422 on its own, as `application/json` bodies of its own
shape. What the API really answers (API.md, blueprints/common/problems.py) is RFC 9457
problem+json, and a few more statuses that any route of a kind can produce. Rather than
repeat them on ~90 views, this spec processor adds them by what an operation is:

- every operation under /api/: 429 (rate limited) and 503 (a dependency is down);
- authenticated ones: 400 (both credentials sent), 401 and 403 (an API key's scope, or a
  role, or not an operator);
- ones with a JSON body: 400 (malformed JSON), 413 (too large), 415 (not JSON), 422;
- ones with query parameters: 422;
- `@idempotent` ones: the `Idempotency-Key` header, 409 (the first request still runs)
  and 422 (the key reused with another body).

Statuses only some routes produce (a duplicate SKU's 409, say) stay on those routes, in
`@bp.doc(responses=...)`; this processor only gives them the problem+json body.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from apiflask import APIFlask

from blueprints.common.problems import PROBLEM_MIMETYPE

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
_METHODS = ("get", "put", "post", "patch", "delete")
# `<uuid:team_id>` -> `{team_id}`, the way APIFlask writes Flask rules as OpenAPI paths.
_RULE_ARGUMENT = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")
_UUID_ARGUMENT = re.compile(r"<uuid:([^<>]+)>")
IDEMPOTENCY_MARK = "idempotency_key"  # set on views by blueprints.common.idempotency
SECURITY_MARK = "documented_security"  # set on views by blueprints.common.auth


def register_openapi(app: APIFlask) -> None:
    """Install the spec processor (once, in the app factory)."""

    @app.spec_processor
    def _document_errors(spec: dict[Any, Any] | str) -> dict[Any, Any] | str:
        assert isinstance(spec, dict), "SPEC_FORMAT is json (config.py)"
        return document_errors(spec, _views_by_operation(app), _uuid_arguments(app))


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
        for method in _METHODS:
            operation = operations.get(method)
            if operation is None:
                continue
            view = views.get((path, method))
            if view is not None and getattr(view, SECURITY_MARK, None):
                operation["security"] = getattr(view, SECURITY_MARK)
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
    if path.startswith("/api/"):
        statuses |= {429, 503}
    if operation.get("security"):
        statuses |= {400, 401, 403}
    if "requestBody" in operation:
        statuses |= {400, 413, 415, 422}
    if any(p.get("in") == "query" for p in operation.get("parameters", [])):
        statuses.add(422)
    if view is not None and hasattr(view, IDEMPOTENCY_MARK):
        statuses |= {409, 422}
    return statuses


def _document_idempotency_key(operation: dict[str, Any], *, required: bool) -> None:
    parameters = operation.setdefault("parameters", [])
    if any(p.get("name") == "Idempotency-Key" for p in parameters):
        return
    parameters.append(
        {
            "in": "header",
            "name": "Idempotency-Key",
            "required": required,
            "description": "Replays the first response for a repeated key (API.md).",
            "schema": {"type": "string", "minLength": 1, "maxLength": 255},
        }
    )


def _document_uuid_parameters(operation: dict[str, Any], names: set[str]) -> None:
    """`<uuid:x>` rules take only UUIDs (anything else is a 404 before the view runs)."""
    for parameter in operation.get("parameters", []):
        if parameter.get("in") == "path" and parameter.get("name") in names:
            parameter["schema"] = {"type": "string", "format": "uuid"}


def _uuid_arguments(app: APIFlask) -> dict[str, set[str]]:
    return {
        _RULE_ARGUMENT.sub(r"{\1}", rule.rule): set(_UUID_ARGUMENT.findall(rule.rule))
        for rule in app.url_map.iter_rules()
    }


def _views_by_operation(app: APIFlask) -> dict[tuple[str, str], Callable[..., Any]]:
    views: dict[tuple[str, str], Callable[..., Any]] = {}
    for rule in app.url_map.iter_rules():
        path = _RULE_ARGUMENT.sub(r"{\1}", rule.rule)
        for method in rule.methods or ():
            views[(path, method.lower())] = app.view_functions[rule.endpoint]
    return views
