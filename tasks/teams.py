"""Team tasks: deleting a team in the background."""

from __future__ import annotations

import uuid
from typing import Any

from services.core.errors import ServiceError
from services.jobs import names
from services.jobs.context import JobContext
from services.jobs.errors import PermanentError
from services.jobs.runner import job_task
from services.teams import teams


@job_task(names.TEAMS_DELETE)
def delete_team(ctx: JobContext) -> dict[str, Any]:
    """Soft-delete team `team_id`, dropping memberships and open invites; idempotent."""
    try:
        return teams.soft_delete_team(uuid.UUID(ctx.args["team_id"]), actor_id=ctx.user_id)
    except ServiceError as exc:  # a missing or personal team: retrying cannot help
        raise PermanentError(exc.detail) from exc
