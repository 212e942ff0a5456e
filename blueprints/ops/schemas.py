"""What the operational endpoints answer (their errors are problem+json like any other)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class HealthOut(BaseModel):
    status: Literal["ok"]


class ReadyOut(BaseModel):
    status: Literal["ok"]
    checks: dict[str, str] = Field(description="Each dependency's state: `ok`.")


class ApiIndexOut(BaseModel):
    version: str
    areas: dict[str, str] = Field(description="Each area's path (`{team_id}` to fill in).")
    links: dict[str, str] = Field(description="The document, the docs, health and metrics.")
