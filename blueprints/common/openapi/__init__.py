"""The OpenAPI document at /openapi.json, fit for client generators.

APIFlask builds the document from the views; one spec processor then makes it say what
the API does, in steps of their own:

- `schemas`: one component per pydantic model, requests in validation mode and responses
  in serialization mode, query parameters from their models;
- `operations`: operationIds, tags, who may call (security, `[]` on public operations;
  a sentence on roles and scopes), and what views declare themselves (`operation_doc`);
- `errors`: the problem+json body on every error, and the statuses of each kind of
  operation (auth, body, query, idempotency, rate limit);
- `headers`: the response headers the server sends (components/headers, referenced).

Views mark what the document needs to know: `@auth_required` and `@admin_required` their
security (SECURITY_MARK), `@idempotent` its key (IDEMPOTENCY_MARK), `@team_permission` its
actions, `@operation_doc` anything else.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from apiflask import APIFlask

from blueprints.common.openapi.errors import document_errors
from blueprints.common.openapi.headers import document_headers, header_ref
from blueprints.common.openapi.marks import IDEMPOTENCY_MARK, SCOPE_MARK, SECURITY_MARK
from blueprints.common.openapi.operations import describe_operations, operation_doc
from blueprints.common.openapi.schemas import component_schemas

__all__ = [
    "IDEMPOTENCY_MARK",
    "SCOPE_MARK",
    "SECURITY_MARK",
    "header_ref",
    "operation_doc",
    "process_spec",
    "register_openapi",
]

# `<uuid:team_id>` -> `{team_id}`, the way APIFlask writes Flask rules as OpenAPI paths.
_RULE_ARGUMENT = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")
_UUID_ARGUMENT = re.compile(r"<uuid:([^<>]+)>")


def register_openapi(app: APIFlask) -> None:
    """Install the spec processor (once, in the app factory)."""

    @app.spec_processor
    def _process(spec: dict[Any, Any] | str) -> dict[Any, Any] | str:
        assert isinstance(spec, dict), "SPEC_FORMAT is json (config.py)"
        return process_spec(app, spec)


def process_spec(app: APIFlask, spec: dict[str, Any]) -> dict[str, Any]:
    """APIFlask's document, made to say what the API does (the steps in the module doc)."""
    views = _views_by_operation(app)
    component_schemas(spec, views)
    describe_operations(spec, views)  # first: the errors of an operation follow its security
    document_errors(spec, views, _uuid_arguments(app))
    document_headers(spec, views)
    return spec


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
