"""Every team-scoped route x every kind of caller, checked against the permission table.

The expected answer is computed from `services.permissions`, never written by hand:
allowed -> 2xx, a member whose role is too weak -> 403, a non-member -> 404, nobody
signed in -> 401. A route under /api/v1/teams/<team_id> missing from MATRIX fails
`test_every_team_route_is_in_the_matrix`, so a new route cannot skip this check.
MATRIX and the world live in tests/access.py (test_openapi_access.py uses them too); here
every (case, caller) pair gets a world of its own.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from apiflask import APIFlask
from flask.testing import FlaskClient

from models.team import ROLES
from services import permissions
from tests.access import MATRIX, TEAM, Case, TeamWorld
from tests.factories import auth_headers
from tests.support import ROOT

CALLERS = (*ROLES, "outsider", "anonymous")


def expected(caller: str, action: str) -> int | str:
    if caller == "anonymous":
        return 401
    if caller == "outsider":
        return 404
    return "2xx" if permissions.allows(caller, action) else 403


@pytest.fixture
def world(app: APIFlask, case: Case) -> TeamWorld:
    """The team, with a paid plan unless the case wants none (see tests/access.py)."""
    return TeamWorld(case.subscription)


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("case", MATRIX, ids=lambda c: c.id)
def test_route_answers_as_the_permission_table_says(
    client: FlaskClient, world: TeamWorld, case: Case, caller: str
) -> None:
    headers = {} if caller == "anonymous" else dict(auth_headers(world.user(caller)))
    headers.update(world.headers(case))
    response = client.open(
        world.url(case, caller), method=case.method, json=world.body(case, caller), headers=headers
    )

    want = expected(caller, case.action)
    text = response.get_data(as_text=True)
    if want == "2xx":
        # A download's success is a redirect to the file's signed URL.
        assert 200 <= response.status_code < 300 or response.status_code == 302, text
    else:
        assert response.status_code == want, text
        assert response.mimetype == "application/problem+json"
    if want == 404:
        # Indistinguishable from a team that does not exist: nothing leaks.
        assert response.get_json()["detail"] == "No such team."


def test_every_team_route_is_in_the_matrix(app: APIFlask) -> None:
    routes = {
        (method, rule.rule)
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith(TEAM)
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}
    }
    covered = {(case.method, case.rule) for case in MATRIX}
    assert routes - covered == set(), "add these team routes to MATRIX"
    assert covered - routes == set(), "MATRIX names routes that do not exist"


def test_every_team_route_is_guarded_by_the_action_the_matrix_expects(app: APIFlask) -> None:
    endpoints = {
        (method, rule.rule): rule.endpoint
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith(TEAM)
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}
    }
    for case in MATRIX:
        view = app.view_functions[endpoints[(case.method, case.rule)]]
        actions = getattr(view, "team_actions", None)
        assert actions is not None, f"{case.id} is not guarded by @team_permission"
        assert case.action in actions, f"{case.id} is guarded by {actions}"
    every_action = {case.action for case in MATRIX}
    assert every_action == set(permissions.PERMISSIONS), "each permission is used by a route"


def test_readme_permissions_table_matches_the_module() -> None:
    readme = (Path(ROOT) / "README.md").read_text()
    assert "## Permissions" in readme
    assert permissions.markdown_table() in readme, (
        "README.md's permission table is out of date; paste services.permissions.markdown_table()"
    )
