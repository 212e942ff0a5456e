"""Operational endpoints: liveness, readiness and the API index."""

from __future__ import annotations

from typing import Any

from apiflask import APIBlueprint
from flask import url_for

from blueprints.common.problems import problem
from extensions import limiter
from services.health import readiness

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
}


@bp.get("/healthz")
@limiter.exempt
def healthz() -> dict[str, str]:
    """The process is alive (no dependency checks)."""
    return {"status": "ok"}


@bp.get("/readyz")
@limiter.exempt
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


@bp.get("/api")
def api_index() -> dict[str, Any]:
    """Where everything is: the areas of the API and its documentation."""
    return {
        "version": "v1",
        "areas": AREAS,
        "links": {
            "openapi": url_for("openapi.spec"),
            "docs": url_for("openapi.docs"),
            "health": url_for("ops.healthz"),
            "ready": url_for("ops.readyz"),
        },
    }
