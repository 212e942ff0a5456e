"""What the aggregation tests share: events sent over HTTP or written straight to the
table, a run through the real worker, and the rollups read back."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from flask.testing import FlaskClient
from sqlalchemy import Engine, select, text

from extensions import db
from models import AnalyticsRollup, Job, User
from tests.factories import auth_headers
from tests.support import wait_for, wait_job

HOUR = timedelta(hours=1)


def hour_start(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


# Fixed points in the recent past, at least two hours back so "now" never splits them.
NOW = hour_start(datetime.now(UTC))
H1 = NOW - 3 * HOUR
H2 = NOW - 2 * HOUR


def send(client: FlaskClient, team_id: uuid.UUID, user: User, events: list[dict[str, Any]]) -> None:
    response = client.post(
        f"/api/v1/teams/{team_id}/analytics/events",
        json={"events": events},
        headers=auth_headers(user),
    )
    assert response.status_code == 202, response.get_data(as_text=True)


def events(name: str, at: datetime, count: int) -> list[dict[str, Any]]:
    return [
        {"name": name, "occurred_at": (at + timedelta(minutes=i % 50)).isoformat()}
        for i in range(count)
    ]


def events_settled() -> None:
    """Wait until no stored event's transaction is at or above the oldest one running.

    A run folds only transactions below that horizon, and on a PostgreSQL server shared
    with other test runs their transactions (any database's) hold it back for a moment:
    without this wait, a run right after an insert may rightly find nothing to fold yet.
    """

    def settled() -> bool:
        db.session.rollback()
        waiting = db.session.execute(
            text(
                "SELECT EXISTS (SELECT 1 FROM analytics_events"
                " WHERE ingest_xid >= pg_snapshot_xmin(pg_current_snapshot()))"
            )
        ).scalar()
        return not waiting

    wait_for(settled, 30)


def aggregate(client: FlaskClient, team_id: uuid.UUID, user: User, **body: str) -> Job:
    """Run `analytics.aggregate` on the worker (the admin's on-demand route) to the end."""
    events_settled()
    response = client.post(
        f"/api/v1/teams/{team_id}/analytics/aggregate", json=body, headers=auth_headers(user)
    )
    assert response.status_code == 202, response.get_data(as_text=True)
    return wait_job(response.get_json()["job"]["id"], "succeeded")


def metric(
    client: FlaskClient,
    team_id: uuid.UUID,
    user: User,
    name: str,
    start: datetime,
    end: datetime,
    interval: str = "hour",
) -> dict[str, Any]:
    response = client.get(
        f"/api/v1/teams/{team_id}/analytics/metrics",
        query_string={"name": name, "from": start.isoformat(), "to": end.isoformat(),
                      "interval": interval},
        headers=auth_headers(user),
    )  # fmt: skip
    assert response.status_code == 200, response.get_data(as_text=True)
    body: dict[str, Any] = response.get_json()
    return body


def values(body: Mapping[str, Any]) -> list[int]:
    return [point["value"] for point in body["points"]]


def rollups(team_id: uuid.UUID) -> list[tuple[str, str, datetime, int]]:
    """The team's event rollups (built-ins move with every run: each counts the last)."""
    db.session.rollback()
    return list(
        db.session.execute(
            select(
                AnalyticsRollup.name, AnalyticsRollup.interval, AnalyticsRollup.bucket,
                AnalyticsRollup.value,
            )
            .where(AnalyticsRollup.team_id == team_id, AnalyticsRollup.name.not_like("builtin.%"))
            .order_by(AnalyticsRollup.name, AnalyticsRollup.interval, AnalyticsRollup.bucket)
        )
    )  # fmt: skip


ADD_EVENT = text(
    "INSERT INTO analytics_events (team_id, name, occurred_at) VALUES (:team, 'x.y', :at)"
)


def add_events(engine: Engine, team: uuid.UUID, count: int) -> None:
    """`count` events of the team in hour H1, committed on a connection of their own."""
    with engine.begin() as conn:
        conn.execute(ADD_EVENT, [{"team": team, "at": H1}] * count)
