"""Analytics ingestion bodies: a batch of events, each checked by the service's rules.

The rules live in `services.insights.analytics`; the validators here call them so that a bad batch
is answered with every problem at once, keyed by position (`events.3.occurred_at`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, Field, field_validator

from blueprints.common.schemas import Strict
from services.insights import analytics


def _ok(problem: str | None) -> None:
    if problem:
        raise ValueError(problem)


class EventIn(Strict):
    name: str = Field(description="Lowercase: a letter, then a-z, 0-9, '_' or '.' (<= 100).")
    occurred_at: AwareDatetime = Field(
        description="ISO-8601 with an offset; at most 5 minutes ahead and 90 days back."
    )
    properties: dict[str, Any] = Field(
        default_factory=dict, description="Any JSON object up to 8 KB."
    )
    dedup_id: str | None = Field(
        None, description="Client id: an event the team already has with it is a duplicate."
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        _ok(analytics.name_problem(value))
        return value

    @field_validator("occurred_at")
    @classmethod
    def _occurred_at(cls, value: AwareDatetime) -> AwareDatetime:
        _ok(analytics.occurred_at_problem(value))
        return value

    @field_validator("properties")
    @classmethod
    def _properties(cls, value: dict[str, Any]) -> dict[str, Any]:
        _ok(analytics.properties_problem(value))
        return value

    @field_validator("dedup_id")
    @classmethod
    def _dedup_id(cls, value: str | None) -> str | None:
        _ok(analytics.dedup_id_problem(value))
        return value

    def to_input(self) -> analytics.EventInput:
        """The service's view of this event."""
        return analytics.EventInput(
            name=self.name,
            occurred_at=self.occurred_at,
            properties=self.properties,
            dedup_id=self.dedup_id,
        )


class EventBatchIn(Strict):
    events: list[EventIn] = Field(
        min_length=1,
        max_length=analytics.MAX_EVENTS,
        description=f"1 to {analytics.MAX_EVENTS} events, stored all or none.",
    )


class IngestAccepted(BaseModel):
    accepted: int = Field(description="Events stored now.")
    duplicates: int = Field(description="Events skipped: their dedup id was already stored.")


class MetricsQuery(BaseModel):
    name: str = Field(
        min_length=1,
        max_length=100,
        description="An event name, or a built-in metric: builtin.signups, "
        "builtin.active_users, builtin.payments.count, builtin.payments.revenue.<currency>, "
        "builtin.jobs.run, builtin.jobs.failed.",
    )
    from_: AwareDatetime = Field(alias="from", description="Start (inclusive, rounded down).")
    to: AwareDatetime = Field(description="End (exclusive).")
    interval: Literal["hour", "day"] = Field("hour", description="UTC hours or UTC days.")


class MetricPointOut(BaseModel):
    bucket: datetime = Field(description="Start of the UTC hour or day.")
    value: int


class MetricSeriesOut(BaseModel):
    name: str
    interval: str
    total: int = Field(description="Sum of the points (for active users: their maximum).")
    points: list[MetricPointOut] = Field(description="Every bucket of the range, zero-filled.")


class AggregateIn(Strict):
    from_: AwareDatetime | None = Field(
        None, alias="from", description="Rebuild from here (whole UTC days); with `to`."
    )
    to: AwareDatetime | None = Field(None, description="Rebuild up to here (at most 92 days).")
