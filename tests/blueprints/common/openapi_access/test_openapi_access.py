"""Every operation in /openapi.json x every kind of caller, against one access policy.

The callers: nobody; an expired access token; a revoked one (its session logged out); a
revoked API key; a user signed in whose only team is another one ("outsider"); the
operator (`is_admin`, member of no team); each team role; API keys with each scope.

What each should hear comes from a policy, never from the app:
- team routes (`/teams/{team_id}/...`): the route's action (MATRIX, in
  tests/blueprints/common/access.py) in
  services/core/permissions.py: 2xx if the role allows it, 403 if too weak, 404 for anyone
  outside the team (the operator too), exactly as for a team that does not exist;
- every other route: POLICIES below: public, a link anyone holding it may use, any
  signed-in user (on their own things), or operators only;
- signed out (no, expired or revoked credentials): 401 wherever credentials are needed;
- API keys (owned by "bot", a team owner): only where the document lists `ApiKeyAuth`,
  and only with the scope the operation needs (read for GET, write otherwise, ingest for
  analytics events); 403 otherwise.

The document must also say so: public operations list no `security`, all others do.
An operation without a policy (or a policy without an operation) fails
`test_every_documented_operation_has_a_policy`, so a new route cannot skip this check.
`test_nobody_reaches_another_teams_or_another_users_things` covers object-level access:
ids of another team's or another user's things are 404s.

Each operation gets a team of its own, staffed by users made once for the module (and
new users where the call changes the callers themselves), so the tables are emptied once,
after the module, instead of after every test.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl, urlencode

import pytest
from apiflask import APIFlask
from flask.testing import FlaskClient

from blueprints.common.ratelimits import limiter
from models.team import ROLES
from services.core import permissions
from services.identity.api_keys import SCOPES
from tests.blueprints.common.access import MATRIX, fill
from tests.blueprints.common.openapi_access.world import (
    CASES,
    LINK,
    OPERATOR,
    POLICIES,
    PUBLIC,
    SIGNED_IN,
    Call,
    Crowd,
    Own,
    Policy,
    World,
    make_crowd,
)

# The number of operations in /openapi.json. A new route changes it: give the route a
# policy (MATRIX or POLICIES), then update this number.
OPERATION_COUNT = 93

SIGNED_OUT = ("anonymous", "expired", "revoked", "key:revoked")
# Weakest role first: the owner's success (leaving, handing over the team) comes last.
CALLERS = (
    *SIGNED_OUT, "outsider", "operator", *reversed(ROLES), *(f"key:{s}" for s in SCOPES)
)  # fmt: skip
# The scope an API key needs where it is not read (GET) or write (everything else).
KEY_SCOPE = {("POST", "/api/v1/teams/{team_id}/analytics/events"): "ingest"}


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def documented(app: APIFlask) -> dict[tuple[str, str], dict[str, Any]]:
    """(METHOD, path) -> the operation, for every operation in /openapi.json."""
    spec = app.test_client().get("/openapi.json").get_json()
    methods = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
    return {
        (method.upper(), path): operation
        for path, item in spec["paths"].items()
        for method, operation in item.items()
        if method in methods
    }


# --- the tests -----------------------------------------------------------------------------


def test_every_documented_operation_has_a_policy(
    documented: dict[tuple[str, str], dict[str, Any]],
) -> None:
    missing = sorted(set(documented) - set(CASES))
    assert not missing, f"give these operations a policy (MATRIX or POLICIES): {missing}"
    stale = sorted(set(CASES) - set(documented))
    assert not stale, f"these policies name operations the document lacks: {stale}"
    assert len(CASES) == len(documented) == OPERATION_COUNT, (
        f"{len(documented)} operations documented, {len(CASES)} checked: "
        f"update OPERATION_COUNT ({OPERATION_COUNT}) once each has a policy"
    )


@pytest.mark.parametrize("operation", sorted(CASES), ids=" ".join)
def test_operation_answers_every_caller_as_its_policy_says(
    client: FlaskClient,
    crowd: Crowd,
    documented: dict[tuple[str, str], dict[str, Any]],
    operation: tuple[str, str],
) -> None:
    method, path = operation
    security = documented[operation].get("security") or []
    accepts_keys = any("ApiKeyAuth" in option for option in security)
    scope = KEY_SCOPE.get(operation, "read" if method == "GET" else "write")
    wrong: list[str] = []
    for policy in CASES[operation]:
        public = policy.access in (PUBLIC, LINK)
        if public == bool(security):
            wrong.append(f"[{policy.access}] the document says security={security}")
        people = make_crowd() if policy.fresh_people else crowd
        world, spent = World(people, policy.subscription), False
        for caller in CALLERS:
            want = expected(policy, caller, accepts_keys=accepts_keys, scope=scope)
            if policy.one_shot and spent and want == "2xx":
                world, spent = World(people, policy.subscription), False
            call = make_call(world, policy, caller)
            status, mimetype, detail = send(client, world, method, path, call, caller)
            spent = spent or status < 300
            problem = mismatch(want, status, mimetype, detail, team=policy.access in TEAM_ACTIONS)
            if problem:
                wrong.append(f"[{policy.access}] {caller}: {problem}")
    assert not wrong, f"{method} {path}:\n" + "\n".join(wrong)


def test_nobody_reaches_another_teams_or_another_users_things(
    client: FlaskClient, crowd: Crowd
) -> None:
    """Object-level authorisation: the outsider, owner of a team of their own, names this
    team's payments, items, files... under their own team's path, and other users' jobs,
    keys, sessions and notifications by id. Each is a 404, as for an id that does not
    exist (a 403, or worse a success, would mean the id was looked up outside its team)."""
    world = World(crowd, "active")
    own_team = world.personal_team("outsider")
    wrong: list[str] = []
    for case in MATRIX:
        if not set(case.params.values()) - {"caller"}:
            continue  # nothing of the team's named but the team itself
        values = {**world.path_values(case, "owner"), "team_id": own_team}
        query = dict(parse_qsl(case.query.removeprefix("?")))
        call = Call(params=values, json=world.body(case, "outsider"), query=query,
                    headers=world.headers(case))  # fmt: skip
        status, mimetype, detail = send(client, world, case.method, case.path, call, "outsider")
        if problem := mismatch(404, status, mimetype, detail, team=False):
            wrong.append(f"{case.id}: {problem}")
    for (method, path), policy in POLICIES.items():
        if policy.access == SIGNED_IN and isinstance(policy.call, Own):
            call = policy.call(world, "member")  # the member's, not the outsider's
            status, mimetype, detail = send(client, world, method, path, call, "outsider")
            if problem := mismatch(404, status, mimetype, detail, team=False):
                wrong.append(f"{method} {path}: {problem}")
    assert not wrong, "\n".join(wrong)


TEAM_ACTIONS = frozenset(permissions.PERMISSIONS)


def expected(policy: Policy, caller: str, *, accepts_keys: bool, scope: str) -> int | str:
    """The status `caller` should get ("2xx" for any success), from the policy alone."""
    access = policy.access
    permitted = policy.ok.get(caller, "2xx")
    if access == PUBLIC or (access == LINK and caller == "anonymous"):
        return permitted
    if caller in SIGNED_OUT:
        return 401
    if caller.startswith("key:") and (not accepts_keys or caller != f"key:{scope}"):
        return 403
    if access in (SIGNED_IN, LINK):
        return permitted
    if access == OPERATOR:
        return permitted if caller == "operator" else 403
    assert access in TEAM_ACTIONS, f"unknown access {access!r}"
    if caller in ("outsider", "operator"):
        return 404  # as for a team that does not exist: membership is not leaked
    role = "owner" if caller.startswith("key:") else caller  # keys act as bot, an owner
    return permitted if permissions.allows(role, access) else 403


def make_call(world: World, policy: Policy, caller: str) -> Call:
    who = "bot" if caller.startswith("key:") else caller  # the keys' owner
    return policy.call(world, who) if callable(policy.call) else policy.call


def send(
    client: FlaskClient, world: World, method: str, path: str, call: Call, caller: str
) -> tuple[int, str, str]:
    """(status, media type, problem detail or body text) of the caller's request."""
    url = fill(path, {"team_id": world.team_id, **call.params})
    if call.query:
        url += "?" + urlencode(call.query)
    limiter.reset()  # rate limits are not what this test is about
    response = client.open(
        url, method=method, headers={**world.credentials[caller], **call.headers},
        json=call.json, data=call.form if call.form is not None else call.data,
        content_type="multipart/form-data" if call.form is not None else None,
        buffered=False,
    )  # fmt: skip
    mimetype = response.mimetype or ""
    try:
        if mimetype == "text/event-stream":
            return response.status_code, mimetype, ""  # a stream never ends: do not read it
        text = response.get_data(as_text=True)
        if mimetype == "application/problem+json":
            text = str(json.loads(text).get("detail"))
        return response.status_code, mimetype, text[:300]
    finally:
        response.close()


def mismatch(want: int | str, status: int, mimetype: str, detail: str, *, team: bool) -> str:
    """Why the answer is not the expected one ("" if it is)."""
    got = f"got {status} {detail!r}"
    if want == "2xx":
        # A download's success is a redirect to the file's signed URL.
        return "" if 200 <= status < 300 or status == 302 else f"expected 2xx, {got}"
    if status != want:
        return f"expected {want}, {got}"
    if isinstance(want, int) and want >= 400 and mimetype != "application/problem+json":
        return f"expected a problem+json {want}, got {mimetype}"
    if want == 404 and team and detail != "No such team.":
        return f"expected the 404 of a team that does not exist, {got}"
    return ""
