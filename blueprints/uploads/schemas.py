"""Upload bodies: the declared file (checked again against the bytes by the job)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from blueprints.common.schemas import ListQuery, Strict
from blueprints.jobs.schemas import JobOut

FileState = Literal["pending", "processing", "ready", "rejected", "deleted"]


class UploadIn(Strict):
    filename: str = Field(min_length=1, max_length=1024)
    content_type: str = Field(min_length=3, max_length=255, pattern=r"^[\w.+-]+/[\w.+-]+$")
    size: int = Field(gt=0, strict=True, description="Bytes; the stored file must match.")


class FileOut(BaseModel):
    id: uuid.UUID
    team_id: uuid.UUID
    uploaded_by_id: uuid.UUID | None
    filename: str
    content_type: str
    size: int
    state: FileState
    sha256: str | None
    rejection_reason: str | None
    has_thumbnail: bool
    created_at: datetime
    ready_at: datetime | None


class UploadForm(BaseModel):
    url: str
    method: Literal["POST"] = "POST"
    fields: dict[str, str] = Field(description="Post these, then the file as the last field.")
    expires_at: datetime


class UploadCreated(BaseModel):
    file: FileOut
    upload: UploadForm


class FileEnvelope(BaseModel):
    file: FileOut


class FileAccepted(BaseModel):
    job: JobOut
    file: FileOut


class FilePage(BaseModel):
    items: list[FileOut]
    next_cursor: str | None


class FileListQuery(ListQuery):
    state: Literal["pending", "processing", "ready", "rejected"] | None = None
