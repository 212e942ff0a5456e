"""The job ledger: what users see of background work, and the outbox of Celery messages.

A row is written in the same transaction as the change that asked for the work, so an
accepted request is never lost; `published_at IS NULL` marks messages still to send.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Index, SmallInteger, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, Timestamps, UUIDPrimaryKey, non_negative, one_of

JOB_STATUSES = ("queued", "running", "succeeded", "failed", "retrying", "dead", "cancelled")
# States a job never leaves (except an admin retry of `dead`/`failed`).
FINISHED = frozenset({"succeeded", "failed", "dead", "cancelled"})
# States in which a delivered message may start (or resume) the work.
RUNNABLE = frozenset({"queued", "retrying"})


class Job(UUIDPrimaryKey, Timestamps, Base):
    __tablename__ = "jobs"
    __table_args__ = (
        one_of("status", JOB_STATUSES),
        CheckConstraint("progress BETWEEN 0 AND 100", name="progress_percent"),
        non_negative("attempts"),
        Index("ix_jobs_user_created", "user_id", "created_at"),
        Index("ix_jobs_status_type", "status", "type"),
        # The relay's scan: only unpublished rows, so it stays cheap with a big ledger.
        Index(
            "ix_jobs_unpublished",
            "run_after",
            postgresql_where=text("published_at IS NULL AND status IN ('queued', 'retrying')"),
        ),
        # The reaper's scan: running jobs by heartbeat age.
        Index(
            "ix_jobs_running_heartbeat", "heartbeat_at", postgresql_where=text("status = 'running'")
        ),
        # Analytics built-ins: team jobs finished in the last hours.
        Index("ix_jobs_team_finished", "finished_at", postgresql_where=text("team_id IS NOT NULL")),
        # A team's newest jobs (the dashboard).
        Index(
            "ix_jobs_team_created",
            "team_id",
            "created_at",
            postgresql_where=text("team_id IS NOT NULL"),
        ),
    )

    type: Mapped[str] = mapped_column(String(100))  # the Celery task name, e.g. exports.build
    queue: Mapped[str] = mapped_column(String(50))
    status: Mapped[str] = mapped_column(String(20), default="queued", server_default="queued")
    user_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    team_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("teams.id", ondelete="SET NULL"), index=True
    )
    # Ids and small scalars only: never secrets or personal data (Flower shows task args).
    args: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")
    progress: Mapped[int] = mapped_column(SmallInteger, default=0, server_default="0")
    attempts: Mapped[int] = mapped_column(default=0, server_default="0")
    max_attempts: Mapped[int] = mapped_column(default=5, server_default="5")
    error: Mapped[str | None] = mapped_column(Text)
    traceback: Mapped[str | None] = mapped_column(Text)  # admins only
    result: Mapped[dict[str, Any] | None]
    request_id: Mapped[str | None] = mapped_column(String(64))
    # Outbox: when the Celery message was handed to the broker (NULL = still to send).
    published_at: Mapped[datetime | None]
    # Earliest time the next attempt may start (retry backoff, scheduled work).
    run_after: Mapped[datetime] = mapped_column(server_default=text("now()"))
    # Who runs it now ("host:pid") and when it last said so.
    worker: Mapped[str | None] = mapped_column(String(255))
    heartbeat_at: Mapped[datetime | None]
    cancel_requested_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED
