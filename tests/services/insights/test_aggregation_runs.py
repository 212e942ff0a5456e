"""Aggregation runs: the hourly run and teams' on-demand runs count every event once, the
beat queues no second run, and a deleted team keeps no rollups."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import func, select

from extensions import db
from models import AnalyticsRollup, Job
from services.insights import aggregation, aggregation_runs
from services.teams import teams
from tests.factories import make_team, make_user
from tests.services.insights.aggregation_helpers import (
    ADD_EVENT,
    H1,
    H2,
    add_events,
    events_settled,
    rollups,
)
from tests.support import own_engine

pytestmark = pytest.mark.worker


def test_the_hourly_beat_adds_no_run_while_one_is_waiting(app: Any) -> None:
    """A backlog of ticks (or two beats) cannot pile up runs behind a slow one."""
    waiting = Job(type="analytics.aggregate", queue="analytics", status="running", args={})
    db.session.add(waiting)
    db.session.commit()
    created_before = db.session.scalar(select(func.count()).select_from(Job))
    try:
        assert aggregation_runs.start_scheduled_run() is None
        assert aggregation_runs.start_scheduled_run() is None
        assert db.session.scalar(select(func.count()).select_from(Job)) == created_before
    finally:
        waiting.status = "succeeded"
        db.session.commit()
    queued = aggregation_runs.start_scheduled_run()  # nothing waiting any more: a run
    assert queued is not None
    assert db.session.get(Job, queued.id) is not None


def test_team_runs_and_hourly_runs_count_every_event_once(app: Any, migrated_database: str) -> None:
    """A team's on-demand run folds only that team and moves only its own watermark: the
    hourly run then adds every other team's events and none of this team's twice, also
    for a batch still being written while the team ran."""
    a_owner, b_owner = make_user(), make_user()
    a, b = make_team(a_owner), make_team(b_owner)
    engine = own_engine(migrated_database)

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
            slow.execute(ADD_EVENT, {"team": a, "at": H1})  # open, not committed
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
    engine = own_engine(migrated_database)

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
