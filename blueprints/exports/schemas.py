"""Export request and representation bodies (API.md "exports")."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from blueprints.common.schemas import Strict
from blueprints.jobs.schemas import JobOut
from blueprints.payments.schemas import PaymentStatus

ExportResource = Literal["payments", "inventory", "audit_logs", "analytics", "members"]
ExportFormat = Literal["csv", "jsonl", "xlsx"]
ExportStatus = Literal["queued", "running", "ready", "failed", "expired"]


class ExportFilters(Strict):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_: AwareDatetime | None = Field(None, alias="from", description="Created at or after.")
    to: AwareDatetime | None = Field(None, description="Created before.")
    status: PaymentStatus | None = Field(None, description="Payments only.")

    def stored(self) -> dict[str, Any]:
        """The filters as kept on the export row (JSON: ISO times, only those given)."""
        values = {"from": self.from_, "to": self.to, "status": self.status}
        return {k: v.isoformat() if isinstance(v, datetime) else v
                for k, v in values.items() if v is not None}  # fmt: skip


class ExportIn(Strict):
    resource: ExportResource
    format: ExportFormat = "csv"
    filters: ExportFilters = Field(default_factory=lambda: ExportFilters.model_validate({}))


class ExportLinks(BaseModel):
    self: str
    download: str


class ExportOut(BaseModel):
    id: uuid.UUID
    team_id: uuid.UUID
    resource: ExportResource
    format: ExportFormat
    filters: dict[str, Any]
    status: ExportStatus
    requested_by_id: uuid.UUID | None
    row_count: int | None
    size: int | None
    sha256: str | None
    created_at: datetime
    finished_at: datetime | None
    expires_at: datetime | None
    links: ExportLinks


class ExportEnvelope(BaseModel):
    export: ExportOut
    job: JobOut | None


class ExportAccepted(BaseModel):
    job: JobOut
    export: ExportOut


class ExportPage(BaseModel):
    items: list[ExportOut]
    next_cursor: str | None
