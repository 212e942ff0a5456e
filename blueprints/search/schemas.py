"""Search query and results (API.md "search")."""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import BaseModel, Field


class SearchQuery(BaseModel):
    q: str = Field(min_length=1, max_length=200, description="Words; each matches as a prefix.")
    type: Literal["inventory", "member", "file", "payment"] | None = Field(
        None, description="Only this kind of result."
    )
    limit: int = Field(20, ge=1, le=50)


class SearchHitOut(BaseModel):
    type: str
    id: uuid.UUID
    title: str
    snippet: str = Field(description="Plain text; matches are wrapped in « and ».")
    rank: float


class SearchPage(BaseModel):
    items: list[SearchHitOut]
    next_cursor: str | None = None
