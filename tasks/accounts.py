"""Account lifecycle jobs."""

from __future__ import annotations

import uuid
from typing import Any

from services.identity.profile import anonymise_user
from services.jobs.runner import JobContext, job_task


@job_task("accounts.delete")
def delete_account(ctx: JobContext) -> dict[str, Any]:
    """Anonymise a user (args: user_id); idempotent: a second run finds nothing to do."""
    done = anonymise_user(uuid.UUID(ctx.args["user_id"]))
    return {"anonymised": done}
