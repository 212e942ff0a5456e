"""Analytics aggregation: events and our own data folded into hourly and daily rollups.

Runs go through the real worker (`POST .../analytics/aggregate` queues `analytics.aggregate`);
the metrics are read back over HTTP, as the frontend does.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select, text, update

from extensions import db
from models import AnalyticsRollup, Job, Payment
from services.insights import aggregation
from services.jobs import names
from tests.factories import add_member, auth_headers, make_team, make_user
from tests.services.insights.aggregation_helpers import (
    H1,
    H2,
    HOUR,
    NOW,
    aggregate,
    events,
    events_settled,
    hour_start,
    metric,
    rollups,
    send,
    values,
)
from tests.support import Worker, own_engine, problem_body

pytestmark = pytest.mark.worker


def test_events_become_hourly_and_daily_series_and_a_rerun_changes_nothing(
    client: FlaskClient, worker: Worker
) -> None:
    owner = make_user()
    team_id = make_team(owner)
    send(client, team_id, owner, events("page.view", H1, 7) + events("page.view", H2, 5))
    send(client, team_id, owner, events("signup.clicked", H2, 2))

    aggregate(client, team_id, owner)
    series = metric(client, team_id, owner, "page.view", H1, H2 + HOUR)
    assert values(series) == [7, 5]
    assert series["total"] == 12
    assert [datetime.fromisoformat(p["bucket"]) for p in series["points"]] == [H1, H2]
    day = metric(client, team_id, owner, "page.view", H1, H2 + HOUR, "day")
    assert day["total"] == 12  # the hours' days, whichever days they fall on

    first = rollups(team_id)
    aggregate(client, team_id, owner)  # nothing new: the same numbers
    assert rollups(team_id) == first
    # Rebuilding the window from the raw events also gives the same numbers.
    aggregate(client, team_id, owner, **{"from": H1.isoformat(), "to": (H2 + HOUR).isoformat()})
    assert rollups(team_id) == first


def test_a_late_event_is_counted_in_its_own_past_window_after_the_next_run(
    client: FlaskClient, worker: Worker
) -> None:
    owner = make_user()
    team_id = make_team(owner)
    two_days_ago = NOW - timedelta(days=2)
    send(client, team_id, owner, events("order.placed", two_days_ago, 3))
    aggregate(client, team_id, owner)
    assert metric(client, team_id, owner, "order.placed", two_days_ago, NOW, "day")["total"] == 3

    send(client, team_id, owner, events("order.placed", two_days_ago, 1))  # arrives late
    before = metric(client, team_id, owner, "order.placed", two_days_ago, two_days_ago + HOUR)
    assert values(before) == [3]  # the metrics read rollups only: not counted yet
    aggregate(client, team_id, owner)
    after = metric(client, team_id, owner, "order.placed", two_days_ago, two_days_ago + HOUR)
    assert values(after) == [4]
    assert metric(client, team_id, owner, "order.placed", two_days_ago, NOW, "day")["total"] == 4


def test_rebuilding_a_window_repairs_rollups_from_the_raw_events(
    client: FlaskClient, worker: Worker
) -> None:
    owner = make_user()
    team_id = make_team(owner)
    send(client, team_id, owner, events("file.opened", H1, 4))
    aggregate(client, team_id, owner)
    good = rollups(team_id)
    db.session.execute(
        update(AnalyticsRollup).where(AnalyticsRollup.team_id == team_id).values(value=999)
    )
    db.session.commit()

    aggregate(client, team_id, owner, **{"from": H1.isoformat(), "to": H2.isoformat()})
    assert rollups(team_id) == good


def test_an_event_still_being_written_during_a_run_is_counted_once_by_a_later_run(
    app: Any, migrated_database: str
) -> None:
    """The watermark stops at the oldest running transaction, so a batch that commits
    after a run started (with a lower id than events already counted) is never skipped."""
    owner = make_user()
    team_id = make_team(owner)
    engine = own_engine(migrated_database)
    insert = text(
        "INSERT INTO analytics_events (team_id, name, occurred_at)"
        " VALUES (:team, 'slow.batch', :at)"
    )
    try:
        with engine.connect() as slow:
            slow.execute(insert, {"team": team_id, "at": H1})  # open, not committed
            with engine.begin() as fast:  # a later batch commits first
                fast.execute(insert, {"team": team_id, "at": H1})
            aggregation.run()
            db.session.commit()
            slow.commit()
        events_settled()
        aggregation.run()
        db.session.commit()
        aggregation.run()  # and again: nothing is counted twice
        db.session.commit()
    finally:
        engine.dispose()
    counts = {(name, interval): value for name, interval, _, value in rollups(team_id)}
    assert counts == {("slow.batch", "hour"): 2, ("slow.batch", "day"): 2}


def test_built_in_metrics_count_members_payments_revenue_and_jobs(
    client: FlaskClient, worker: Worker
) -> None:
    owner = make_user()
    team_id = make_team(owner)
    add_member(team_id, make_user(), "member")
    now = datetime.now(UTC)
    for amount, currency in ((1500, "USD"), (2500, "USD"), (900, "EUR")):
        db.session.add(
            Payment(team_id=team_id, amount=amount, currency=currency, status="succeeded",
                    succeeded_at=now)
        )  # fmt: skip
    db.session.add(Payment(team_id=team_id, amount=700, currency="USD", status="failed"))
    db.session.commit()

    first_run = aggregate(client, team_id, owner)
    start, end = hour_start(now), hour_start(now) + HOUR

    def total(name: str) -> int:
        return int(metric(client, team_id, owner, name, start, end)["total"])

    assert total("builtin.signups") == 2  # the owner and the member joined this hour
    assert total("builtin.payments.count") == 3
    assert total("builtin.payments.revenue.usd") == 4000
    assert total("builtin.payments.revenue.eur") == 900
    # The owner created the team and requested the run (both audited); the member did
    # nothing yet.
    assert total("builtin.active_users") == 1
    # A run cannot count itself (it finishes after counting); the next run counts it.
    assert first_run.finished_at is not None
    aggregate(client, team_id, owner)
    start = hour_start(first_run.finished_at)
    end = start + HOUR
    assert total("builtin.jobs.run") == 1
    assert total("builtin.jobs.failed") == 0


def test_metrics_stay_inside_their_team(client: FlaskClient, worker: Worker) -> None:
    owner, stranger = make_user(), make_user()
    team_id, other_team = make_team(owner), make_team(stranger)
    send(client, team_id, owner, events("secret.event", H1, 3))
    aggregate(client, team_id, owner)
    assert values(metric(client, other_team, stranger, "secret.event", H1, H2)) == [0]
    response = client.get(
        f"/api/v1/teams/{team_id}/analytics/metrics",
        query_string={"name": "secret.event", "from": H1.isoformat(), "to": H2.isoformat()},
        headers=auth_headers(stranger),
    )
    problem_body(response, 404)


def test_bad_ranges_and_reserved_names_are_refused(client: FlaskClient) -> None:
    owner = make_user()
    team_id = make_team(owner)
    url = f"/api/v1/teams/{team_id}/analytics/metrics"
    backwards = client.get(
        url,
        query_string={"name": "x", "from": H2.isoformat(), "to": H1.isoformat()},
        headers=auth_headers(owner),
    )
    assert "to" in problem_body(backwards, 422)["errors"]
    too_long = client.get(
        url,
        query_string={"name": "x", "from": (NOW - timedelta(days=60)).isoformat(),
                      "to": NOW.isoformat(), "interval": "hour"},
        headers=auth_headers(owner),
    )  # fmt: skip
    assert "1000" in problem_body(too_long, 422)["detail"].replace(",", "")
    naive = client.get(
        url,
        query_string={"name": "x", "from": "2026-01-01T00:00:00", "to": NOW.isoformat()},
        headers=auth_headers(owner),
    )
    problem_body(naive, 422)

    reserved = client.post(
        f"/api/v1/teams/{team_id}/analytics/events",
        json={"events": [{"name": "builtin.signups", "occurred_at": NOW.isoformat()}]},
        headers=auth_headers(owner),
    )
    assert "events.0.name" in problem_body(reserved, 422)["errors"]

    one_sided = client.post(
        f"/api/v1/teams/{team_id}/analytics/aggregate",
        json={"from": H1.isoformat()},
        headers=auth_headers(owner),
    )
    assert "to" in problem_body(one_sided, 422)["errors"]
    assert db.session.scalar(
        select(Job.id).where(Job.team_id == team_id, Job.type == names.ANALYTICS_AGGREGATE)
    ) is None  # fmt: skip
