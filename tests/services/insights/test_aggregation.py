"""Analytics aggregation: events and our own data folded into hourly and daily rollups.

Runs go through the real worker (`POST .../analytics/aggregate` queues `analytics.aggregate`);
the metrics are read back over HTTP, as the frontend does.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import Engine, create_engine, func, select, text, update

from extensions import db
from models import AnalyticsRollup, Job, Payment, User
from services.insights import aggregation
from services.jobs import names
from services.teams import teams
from tasks.insights import start_aggregate
from tests.factories import add_member, auth_headers, make_team, make_user
from tests.support import Worker, problem_body, wait_for, wait_job

pytestmark = pytest.mark.worker

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
    engine = create_engine(migrated_database)
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


def test_the_hourly_beat_adds_no_run_while_one_is_waiting(app: Any) -> None:
    """A backlog of ticks (or two beats) cannot pile up runs behind a slow one."""
    waiting = Job(type="analytics.aggregate", queue="analytics", status="running", args={})
    db.session.add(waiting)
    db.session.commit()
    created_before = db.session.scalar(select(func.count()).select_from(Job))
    try:
        assert start_aggregate.run() is None
        assert start_aggregate.run() is None
        assert db.session.scalar(select(func.count()).select_from(Job)) == created_before
    finally:
        waiting.status = "succeeded"
        db.session.commit()
    queued = start_aggregate.run()  # nothing waiting any more: the tick queues a run
    assert queued is not None
    assert db.session.get(Job, uuid.UUID(queued)) is not None


_ADD_EVENT = text(
    "INSERT INTO analytics_events (team_id, name, occurred_at) VALUES (:team, 'x.y', :at)"
)


def add_events(engine: Engine, team: uuid.UUID, count: int) -> None:
    """`count` events of the team in hour H1, committed on a connection of their own."""
    with engine.begin() as conn:
        conn.execute(_ADD_EVENT, [{"team": team, "at": H1}] * count)


def test_team_runs_and_hourly_runs_count_every_event_once(app: Any, migrated_database: str) -> None:
    """A team's on-demand run folds only that team and moves only its own watermark: the
    hourly run then adds every other team's events and none of this team's twice, also
    for a batch still being written while the team ran."""
    a_owner, b_owner = make_user(), make_user()
    a, b = make_team(a_owner), make_team(b_owner)
    engine = create_engine(migrated_database)

    def add(team: uuid.UUID, count: int) -> None:
        add_events(engine, team, count)

    def counted(team: uuid.UUID) -> int:
        return sum(v for _, interval, _, v in rollups(team) if interval == "hour")

    def team_run(team: uuid.UUID, *, settle: bool = True) -> None:
        if settle:
            events_settled()
        aggregation.run_team(team)
        db.session.commit()

    def hourly_run() -> None:
        events_settled()
        aggregation.run()
        db.session.commit()

    try:
        add(a, 2)
        add(b, 3)
        team_run(a)
        assert (counted(a), counted(b)) == (2, 0)
        add(a, 1)
        add(b, 1)
        hourly_run()
        assert (counted(a), counted(b)) == (3, 4)
        with engine.connect() as slow:
            slow.execute(_ADD_EVENT, {"team": a, "at": H1})  # open, not committed
            add(a, 5)  # a later batch commits first
            team_run(a, settle=False)  # stops below the open batch: the later one waits too
            assert counted(a) == 3
            slow.commit()
        team_run(a)
        team_run(a)  # nothing new: nothing added
        hourly_run()
        hourly_run()
        assert (counted(a), counted(b)) == (9, 4)
        before = rollups(a)
        aggregation.recompute(a, H1, H2)  # rebuilt from the raw events: the same numbers
        db.session.commit()
        assert rollups(a) == before
    finally:
        engine.dispose()


def test_a_deleted_team_leaves_no_rollups_and_later_runs_write_none(
    app: Any, migrated_database: str
) -> None:
    """Rollups have no foreign key to teams: deleting a team deletes them in the same
    transaction, and runs afterwards skip it (its events not yet folded, the deletion
    job's own built-in metrics), while other teams are counted as before."""
    owner, other_owner = make_user(), make_user()
    gone, kept = make_team(owner), make_team(other_owner)
    engine = create_engine(migrated_database)

    def add(team: uuid.UUID, count: int) -> None:
        add_events(engine, team, count)

    def all_rollups(team: uuid.UUID) -> int:
        db.session.rollback()
        return int(
            db.session.scalar(
                select(func.count()).select_from(AnalyticsRollup)
                .where(AnalyticsRollup.team_id == team)
            ) or 0
        )  # fmt: skip

    def hourly_run() -> None:
        events_settled()
        aggregation.run()
        db.session.commit()

    try:
        add(gone, 2)
        add(kept, 3)
        hourly_run()
        assert all_rollups(gone) > 2  # event rows and built-ins (signups, ...)
        add(gone, 4)  # not folded yet when the team goes
        add(kept, 1)
        summary = teams.soft_delete_team(gone, actor_id=owner.id)
        db.session.commit()
        assert summary["rollups_removed"] > 2
        assert all_rollups(gone) == 0
        hourly_run()
        hourly_run()
        assert all_rollups(gone) == 0
        assert {(n, i): v for n, i, _, v in rollups(kept)} == {
            ("x.y", "hour"): 4,
            ("x.y", "day"): 4,
        }
    finally:
        engine.dispose()
