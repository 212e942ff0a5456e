"""Schemas shared by every area: list queries and pages."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    """Request bodies reject unknown fields, so typos fail loudly (422)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class ListQuery(BaseModel):
    limit: int = Field(50, ge=1, le=200)
    cursor: str | None = Field(None, max_length=512)
