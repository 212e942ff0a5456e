"""The team routes' MATRIX (tests/blueprints/common/access.py) stays complete and true to
the guards.

Every team route must be in MATRIX, guarded by `@team_permission` with the action MATRIX
names, and every permission must be used; README.md's table must match the module. What
each caller hears on each of these routes (2xx, 403, 404 "No such team.", 401) is checked
by tests/blueprints/common/test_openapi_access.py, which takes MATRIX as its policy for them.
"""

from __future__ import annotations

from pathlib import Path

from apiflask import APIFlask

from services.core import permissions
from tests.blueprints.common.access import MATRIX, TEAM
from tests.support import ROOT


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
        "README.md's permission table is out of date; paste "
        "services.core.permissions.markdown_table()"
    )
