"""Asking for aggregation runs: an admin's on-demand run of their team (one pending per
team, a cooldown after each) and beat's hourly trigger of the all-teams run (one queued
at a time). Both queue `analytics.aggregate`; what a run does is in aggregation.py.
"""

from __future__ import annotations

import math
import uuid
from datetime import datetime, timedelta
from typing import Any, Final

from flask import current_app
from sqlalchemy import func, select, text

from extensions import db
from models import Job, User
from models.job import RUNNABLE
from services.core.audit import record_audit
from services.core.errors import Conflict, TooManyRequests, ValidationFailed
from services.core.permissions import Membership
from services.jobs import names
from services.jobs.outbox import enqueue

MAX_RECOMPUTE: Final = timedelta(days=92)  # events older than 90 days are refused anyway
_REQUEST_LOCK_KEY: Final = "analytics.request"
PENDING: Final = RUNNABLE | {"running"}


def request_run(
    user: User, membership: Membership, start: datetime | None, end: datetime | None
) -> Job:
    """An admin's on-demand run of their team: fold the team's new events now and, given
    a window, rebuild the team's rollups over it (whole UTC days). One transaction: the
    job and its audit row.

    One pending run per team: while one is queued or running, the same request gets that
    job back (a different window is 409). After a run finished, the next one waits
    ANALYTICS_AGGREGATE_COOLDOWN_SECONDS (429 + Retry-After), so a loop of requests costs
    one small run per cooldown, never a queue of them.
    """
    team_id = membership.team_id
    args: dict[str, Any] = {"team_id": str(team_id)}
    if (start is None) != (end is None):
        raise ValidationFailed(
            "Give both `from` and `to`, or neither.",
            errors={"from" if start is None else "to": ["Required with the other bound."]},
        )
    if start is not None and end is not None:
        if end <= start:
            raise ValidationFailed("`to` must be after `from`.", errors={"to": ["Too early."]})
        if end - start > MAX_RECOMPUTE:
            raise ValidationFailed(
                "Rebuild at most 92 days at a time.", errors={"to": ["Window too long."]}
            )
        args |= {"from": start.isoformat(), "to": end.isoformat()}
    # The team's requests one at a time, so two at once cannot both queue a run.
    db.session.execute(
        text("SELECT pg_advisory_xact_lock(hashtext(:key), hashtext(:team))"),
        {"key": _REQUEST_LOCK_KEY, "team": str(team_id)},
    )
    pending = db.session.scalar(
        select(Job)
        .where(
            Job.type == names.ANALYTICS_AGGREGATE, Job.status.in_(PENDING), Job.team_id == team_id
        )
        .order_by(Job.created_at)
        .limit(1)
    )
    if pending is not None:
        db.session.commit()  # nothing written; releases the lock
        if pending.args != args:
            raise Conflict(
                "A run for this team is already queued or running (job "
                f"{pending.id}); ask for this one once it has finished."
            )
        return pending
    _refuse_during_cooldown(team_id)
    job = enqueue(names.ANALYTICS_AGGREGATE, args=args, user_id=user.id, team_id=team_id)
    record_audit("analytics.aggregate_requested", actor_id=user.id, team_id=team_id,
                 subject_type="job", subject_id=job.id, data=args)  # fmt: skip
    db.session.commit()
    return job


def _refuse_during_cooldown(team_id: uuid.UUID) -> None:
    """429 until ANALYTICS_AGGREGATE_COOLDOWN_SECONDS after the team's last run finished."""
    settings = current_app.config["SETTINGS"]
    cooldown = timedelta(seconds=settings.analytics_aggregate_cooldown_seconds)
    if not cooldown:
        return
    seconds_left = db.session.scalar(
        select(func.extract("epoch", func.max(Job.finished_at) + cooldown - func.now())).where(
            Job.team_id == team_id, Job.type == names.ANALYTICS_AGGREGATE,
            Job.finished_at > func.now() - cooldown,
        )
    )  # fmt: skip
    if seconds_left is not None and seconds_left > 0:
        raise TooManyRequests(
            "This team's analytics were aggregated moments ago; ask again after Retry-After"
            " seconds (the hourly run aggregates every team anyway).",
            retry_after=math.ceil(float(seconds_left)),
        )


def start_scheduled_run() -> Job | None:
    """Beat's hourly trigger of the all-teams run: one queued at a time (a backlog of ticks
    adds nothing). Teams' on-demand runs do not count: they cannot hold it back."""
    waiting = db.session.scalar(
        select(Job.id)
        .where(
            Job.type == names.ANALYTICS_AGGREGATE, Job.status.in_(PENDING), Job.team_id.is_(None)
        )
        .limit(1)
    )
    if waiting is not None:
        return None
    job = enqueue(names.ANALYTICS_AGGREGATE, args={})
    db.session.commit()
    return job
