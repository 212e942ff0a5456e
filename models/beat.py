"""Beat's shared schedule: for each entry, the latest period some beat sent.

Every beat reads and claims here, so a beat that takes over continues from its
predecessor's last run, and a period is claimed by one beat only (services/jobs/schedule.py).
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, Timestamps


class BeatEntry(Timestamps, Base):
    __tablename__ = "beat_entries"

    # The beat_schedule key (celeryconfig.py), e.g. "reports-daily".
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    task: Mapped[str] = mapped_column(String(100))
    # The start of the latest period sent: its crontab/interval boundary. Only ever moves
    # forward, and only by the claim that sends that period. An entry not yet sent holds
    # the time a beat first saw it, so nothing before that fires.
    last_period: Mapped[datetime]
    # When that period was claimed and its job written (NULL: never sent), by which beat,
    # and the job carrying the run (its row has the outcome).
    last_run_at: Mapped[datetime | None]
    sent_by: Mapped[str | None] = mapped_column(String(255))
    job_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
