"""Identity jobs: deleting (anonymising) an account."""

from __future__ import annotations

import uuid
from typing import Any

from services.identity.profile import anonymise_user
from services.jobs import names
from services.jobs.context import JobContext
from services.jobs.runner import job_task


@job_task(names.ACCOUNTS_DELETE)
def delete_account(ctx: JobContext) -> dict[str, Any]:
    """Anonymise a user (args: user_id); idempotent: a second run finds nothing to do."""
    done = anonymise_user(uuid.UUID(ctx.args["user_id"]))
    return {"anonymised": done}
