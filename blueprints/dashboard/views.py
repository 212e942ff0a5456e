"""HTTP for the team dashboard (API.md "dashboard")."""

from __future__ import annotations

import uuid
from typing import Any

from apiflask import APIBlueprint

from blueprints.common.auth import me
from blueprints.common.openapi import header_ref, operation_doc
from blueprints.common.teams import current_membership, team_permission
from blueprints.dashboard.schemas import DashboardOut
from services.insights import dashboard

bp = APIBlueprint("dashboard", __name__, url_prefix="/api/v1/teams", tag="dashboard")


@bp.get("/<uuid:team_id>/dashboard")
@team_permission("dashboard.read")
@bp.output(DashboardOut)
@operation_doc(responses={200: {"headers": {"X-Cache": header_ref("X-Cache")}}})
def get_dashboard(team_id: uuid.UUID) -> Any:
    """The team at a glance: members, revenue and transactions today and this month,
    subscription, low stock, recent jobs, and your unread notifications. Money parts are
    null unless your role may read payments / the subscription. `X-Cache: hit|miss` tells
    whether the team-wide figures came from the cache."""
    board = dashboard.get_dashboard(me(), current_membership())
    body = DashboardOut.model_validate(
        {**board.summary, "team_id": team_id, "unread_notifications": board.unread_notifications}
    )
    return body, 200, {"X-Cache": board.cache}
