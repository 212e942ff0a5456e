"""Operations in the document: their ids, tags, who may call them, and what views add.

- `operationId`: the view function's name (`list_teams`, `create_export`), or the one its
  `@operation_doc(operation_id=...)` gives where the function's name is not `verb_noun`
  (`login` is `log_in`). Generators name their methods after it, so it never changes.
- tags: one entry per tag, each described here (APIFlask lists a tag once per blueprint,
  and three blueprints share theirs).
- security: what the guards marked (`@auth_required`, `@admin_required`: a `doc` above
  them cannot erase it), `[]` on public operations (APIFlask leaves it out, which reads
  as "unknown"), and a sentence saying who may call: the team action and the roles it
  takes, the API-key scope, operators only, or anyone.
- `@operation_doc(...)`: what APIFlask cannot infer from a view that reads a form or a
  signed link itself (its request body, its parameters, its responses' headers).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any, Final, TypeVar

from blueprints.common.openapi.errors import METHODS
from blueprints.common.openapi.marks import (
    OPERATION_MARK,
    OPERATORS_MARK,
    SCOPE_MARK,
    SECURITY_MARK,
)
from models.team import ROLES
from services.core import permissions

F = TypeVar("F", bound=Callable[..., Any])
OPERATION_ID: Final = re.compile(r"[a-z]+(_[a-z0-9]+)+")

TAGS: Final = {
    "ops": "Where everything is, liveness, readiness and Prometheus metrics.",
    "auth": "Registration, sign-in and tokens, sessions, passwords and API keys.",
    "profile": "The signed-in user's profile and settings, and deleting the account.",
    "jobs": "Background work: every 202 names a job; follow it here or on the event stream.",
    "teams": "Teams, members and roles, invitations, ownership and the audit log.",
    "subscriptions": "Plans (public) and a team's subscription to one.",
    "payments": "Payments and refunds (each needs an Idempotency-Key), and the gateway's webhooks.",
    "notifications": "In-app notifications, delivery preferences and one-click unsubscribe.",
    "events": "Server-Sent Events: job progress and new notifications, live.",
    "exports": "Exports of a team's data (CSV, JSONL, XLSX), built in the background.",
    "inventory": "Stock items and the ledger of their adjustments.",
    "analytics": "Event ingestion, metrics from the rollups, and on-demand aggregation.",
    "search": "Full-text search over a team's members, items, files and payments.",
    "dashboard": "A team's dashboard in one request (cached; see X-Cache).",
    "admin": "Operators only: every job, the dead letters and their replay.",
    "uploads": "A team's files: presigned uploads, their verification, and downloads.",
    "storage": "The signed upload and download links of the local store "
    "(STORAGE_BACKEND=local); S3 serves its own.",
}
SECURITY_SCHEMES: Final = {
    "BearerAuth": "An access token from `POST /api/v1/auth/login` (15 minutes; "
    "`POST /api/v1/auth/refresh` gives a new one).",
    "ApiKeyAuth": "An API key (`mk_...`) from `POST /api/v1/auth/api-keys`. Scopes: `read` "
    "(GET), `write` (everything else), `ingest` (analytics events). Keys never manage "
    "credentials, accounts or operator routes.",
}
INFO: Final = {
    "description": "The Maycole backend's REST API. JSON in and out; errors are RFC 9457 "
    "problem+json; work that takes time answers 202 with the job to follow. The README "
    "states the contract: authentication, rate limits, idempotency, jobs and events.",
}
# Relative: the API is served from the same origin as this document.
SERVERS: Final = [{"url": "/", "description": "The server that serves this document"}]


def operation_doc(*, operation_id: str | None = None, **fields: Any) -> Callable[[F], F]:
    """Document what APIFlask cannot infer about a view: its operationId where the
    function's name is not `verb_noun`, and OpenAPI operation fields (`requestBody`,
    `parameters`, `security`...) merged into what APIFlask wrote. Any place in the
    decorator stack: it only marks the view."""
    if operation_id is not None:
        if not OPERATION_ID.fullmatch(operation_id):
            raise ValueError(f"operationId {operation_id!r} is not verb_noun")
        fields["operationId"] = operation_id

    def decorator(view: F) -> F:
        setattr(view, OPERATION_MARK, {**getattr(view, OPERATION_MARK, {}), **fields})
        return view

    return decorator


def describe_operations(
    spec: dict[str, Any], views: dict[tuple[str, str], Callable[..., Any]]
) -> dict[str, Any]:
    """operationIds, tags, security and who may call, and each view's own fields."""
    spec.setdefault("info", {}).update(INFO)
    spec["servers"] = copy.deepcopy(SERVERS)
    for name, scheme in spec.get("components", {}).get("securitySchemes", {}).items():
        scheme["description"] = SECURITY_SCHEMES[name]
    used: set[str] = set()
    for path, operations in spec.get("paths", {}).items():
        for method in METHODS:
            operation = operations.get(method)
            view = views.get((path, method))
            if operation is None or view is None:
                continue
            operation["operationId"] = view.__name__
            if getattr(view, SECURITY_MARK, None):
                operation["security"] = getattr(view, SECURITY_MARK)
            _merge(operation, getattr(view, OPERATION_MARK, {}))
            operation.setdefault("security", [])
            _say_who_may_call(operation, view)
            used.update(operation.get("tags", []))
    if used - TAGS.keys():
        raise KeyError(f"describe the tags {sorted(used - TAGS.keys())} in TAGS ({__name__})")
    spec["tags"] = [{"name": tag, "description": TAGS[tag]} for tag in TAGS if tag in used]
    return spec


def _merge(operation: dict[str, Any], fields: dict[str, Any]) -> None:
    for key, value in fields.items():
        if key == "parameters":
            named = {(p["in"], p["name"]) for p in value}
            kept = [p for p in operation.get("parameters", []) if (p["in"], p["name"]) not in named]
            operation["parameters"] = kept + value
        elif key == "responses":
            for status, response in value.items():
                operation.setdefault("responses", {}).setdefault(str(status), {}).update(response)
        else:
            operation[key] = value


def _say_who_may_call(operation: dict[str, Any], view: Callable[..., Any]) -> None:
    actions = [a for a in getattr(view, "team_actions", ()) if a is not None]
    security = operation["security"]
    keys = any("ApiKeyAuth" in option for option in security)
    if actions:
        who = (
            f"Team members whose role allows `{actions[0]}` ({_roles(actions[0])}); a weaker "
            "role gets 403, anyone outside the team 404."
        )
        who += "".join(f" `{a}`: {_roles(a)}." for a in actions[1:])
    elif not security:
        who = "Public: no credentials needed."
    elif getattr(view, OPERATORS_MARK, False):
        who = "Operators only (`is_admin`)."
    else:
        who = "Any signed-in user, on their own things."
    if keys:
        scope = getattr(view, SCOPE_MARK, None)
        who += (
            f" API keys need the `{scope}` scope."
            if scope
            else " API keys need the `read` scope for GET, `write` otherwise."
        )
    elif security:
        who += " A bearer token only: API keys are refused."
    description = operation.get("description", "").strip()
    operation["description"] = f"{description}\n\n{who}" if description else who


def _roles(action: str) -> str:
    return ", ".join(role for role in ROLES if permissions.allows(role, action))
