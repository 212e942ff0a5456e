"""Operational endpoints: liveness, readiness, metrics and the API index."""

from __future__ import annotations

import hmac
import ipaddress
from typing import Any

from apiflask import APIBlueprint
from flask import Response, abort, current_app, request, url_for

from blueprints.common import http_metrics
from blueprints.common.openapi import operation_doc
from blueprints.common.problems import problem
from blueprints.common.ratelimits import limiter
from blueprints.ops.schemas import ApiIndexOut, HealthOut, ReadyOut
from services.ops import metrics as metric_exposition
from services.ops.health import readiness

bp = APIBlueprint("ops", __name__, tag="ops")

AREAS = {
    "auth": "/api/v1/auth",
    "profile": "/api/v1/me",
    "notifications": "/api/v1/notifications",
    "events": "/api/v1/events",
    "payments": "/api/v1/teams/{team_id}/payments",
    "jobs": "/api/v1/jobs",
    "teams": "/api/v1/teams",
    "invites": "/api/v1/invites",
    "admin_jobs": "/api/v1/admin/jobs",
    "plans": "/api/v1/plans",
    "subscription": "/api/v1/teams/{team_id}/subscription",
    "inventory": "/api/v1/teams/{team_id}/inventory",
    "analytics": "/api/v1/teams/{team_id}/analytics/events",
    "search": "/api/v1/teams/{team_id}/search",
    "dashboard": "/api/v1/teams/{team_id}/dashboard",
}


@bp.get("/healthz")
@operation_doc(operation_id="check_health")
@limiter.exempt
@bp.output(HealthOut)
def healthz() -> dict[str, str]:
    """The process is alive (no dependency checks)."""
    return {"status": "ok"}


@bp.get("/readyz")
@operation_doc(operation_id="check_readiness")
@limiter.exempt
@bp.output(ReadyOut, description="Ready")
@bp.doc(responses={503: "Not ready: the failing checks are named"})
def readyz() -> Any:
    """Ready to serve: PostgreSQL (at migration head), Redis and the broker reachable."""
    checks = readiness()
    failing = sorted(name for name, state in checks.items() if state != "ok")
    if failing:
        return problem(
            503,
            f"Not ready: {', '.join(failing)} unavailable.",
            type_slug="dependency-unavailable",
            headers={"Retry-After": "5"},
            extra={"checks": checks},
        )
    return {"status": "ok", "checks": checks}


_METRICS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Prometheus text format, or OpenMetrics if the Accept header asks",
        "content": {
            "text/plain": {"schema": {"type": "string"}},
            "application/openmetrics-text": {"schema": {"type": "string"}},
        },
    },
    401: {"description": "METRICS_TOKEN is set and the bearer token does not match"},
    404: {"description": "No METRICS_TOKEN and the caller is not on loopback"},
}


@bp.get("/metrics")
@operation_doc(operation_id="get_metrics")
@limiter.exempt
@bp.doc(responses=_METRICS_RESPONSES)
def metrics() -> Response:
    """Prometheus metrics (text format; OpenMetrics if asked). With METRICS_TOKEN set,
    send `Authorization: Bearer <token>` (401 otherwise); without it, only loopback
    callers are answered (404 for everyone else, as for a path that does not exist)."""
    token = current_app.config["SETTINGS"].metrics_token
    if token:
        if not _bearer_matches(token):
            return problem(
                401,
                "A valid metrics token is required.",
                headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
            )
    elif not _is_loopback(request.remote_addr):
        abort(404)
    body, content_type = metric_exposition.render(
        request.headers.get("Accept"), http_metrics.registry()
    )
    return Response(body, content_type=content_type)


def _bearer_matches(token: str) -> bool:
    scheme, _, sent = request.headers.get("Authorization", "").partition(" ")
    # Constant time: the comparison must not reveal how much of a guess was right.
    return scheme.lower() == "bearer" and hmac.compare_digest(sent.strip().encode(), token.encode())


def _is_loopback(address: str | None) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


@bp.get("/api")
@operation_doc(operation_id="get_api_index")
@bp.output(ApiIndexOut)
def api_index() -> dict[str, Any]:
    """Where everything is: the areas of the API and its documentation."""
    return {
        "version": "v1",
        "areas": AREAS,
        "links": {
            "openapi": url_for("openapi.spec"),
            "docs": url_for("docs.page"),
            "health": url_for("ops.healthz"),
            "ready": url_for("ops.readyz"),
            "metrics": url_for("ops.metrics"),
        },
    }
