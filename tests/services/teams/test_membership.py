"""The team guard's read (`load_membership`): a plain Membership, outside the session for
the HTTP guard, under the team's row lock for the services that change a team."""

from __future__ import annotations

import psycopg
import pytest
from apiflask import APIFlask
from sqlalchemy import text

from config import Settings
from extensions import db
from services.core.errors import Forbidden, NotFound
from services.core.permissions import Membership
from services.teams.teams import load_membership
from tests.factories import make_team, make_user
from tests.support import other_connection


def test_the_guard_reads_the_role_without_opening_the_sessions_transaction(
    app: APIFlask,
) -> None:
    owner, viewer = make_user(), make_user()
    team_id = make_team(owner, members=[(viewer, "viewer")])
    db.session.commit()

    assert load_membership(viewer, team_id, "team.read") == Membership(team_id, viewer.id, "viewer")
    assert not db.session().in_transaction()  # nothing to roll back when the request ends
    with pytest.raises(Forbidden, match=r"\(viewer\)"):
        load_membership(viewer, team_id, "team.update")
    with pytest.raises(NotFound):
        load_membership(make_user(), team_id, "team.read")


def test_the_guard_sees_a_role_change_as_soon_as_it_is_committed(app: APIFlask) -> None:
    owner, member = make_user(), make_user()
    team_id = make_team(owner, members=[(member, "member")])
    assert load_membership(member, team_id, "exports.create").role == "member"

    db.session.execute(
        text("UPDATE team_members SET role = 'viewer' WHERE team_id = :t AND user_id = :u"),
        {"t": team_id, "u": member.id},
    )
    db.session.commit()
    with pytest.raises(Forbidden):
        load_membership(member, team_id, "exports.create")


def test_a_locked_read_holds_the_teams_row_until_the_caller_commits(
    app: APIFlask, settings: Settings
) -> None:
    owner = make_user()
    team_id = make_team(owner)
    db.session.commit()

    locked = load_membership(owner, team_id, "team.update", lock=True)
    assert locked == Membership(team_id, owner.id, "owner")
    with other_connection() as other:
        with pytest.raises(psycopg.errors.LockNotAvailable):
            other.execute("SELECT 1 FROM teams WHERE id = %s FOR UPDATE NOWAIT", (team_id,))
        db.session.commit()
        other.execute("SELECT 1 FROM teams WHERE id = %s FOR UPDATE NOWAIT", (team_id,))
