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

import hashlib
import hmac
import io
import json
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
from apiflask import APIFlask
from flask import current_app
from flask.testing import FlaskClient
from flask_jwt_extended import create_access_token
from sqlalchemy import select

from blueprints.common.auth import admin_required, auth_required
from blueprints.common.openapi import register_openapi
from extensions import db, limiter
from integrations.storage_backends import get_storage
from models import Job, Team, TeamMember, User, UserFile
from models.team import ROLES
from services.core import permissions, tokens
from services.identity import api_keys, sessions
from services.identity.api_keys import SCOPES
from services.messaging import notifications
from services.teams import invites
from tests.blueprints.common.access import MATRIX, Case, TeamWorld, fill
from tests.factories import PASSWORD, give_plan, make_api_key, make_team, make_user
from tests.support import bearer, truncate_all_tables

# The number of operations in /openapi.json. A new route changes it: give the route a
# policy (MATRIX or POLICIES), then update this number.
OPERATION_COUNT = 93

PUBLIC = "public"  # anyone; credentials sent along are ignored
LINK = "link"  # anyone holding an emailed link; credentials sent along are checked
SIGNED_IN = "signed-in"  # any signed-in user, acting on their own things
OPERATOR = "operator"  # users with the `is_admin` flag only

SIGNED_OUT = ("anonymous", "expired", "revoked", "key:revoked")
# Weakest role first: the owner's success (leaving, handing over the team) comes last.
CALLERS = (
    *SIGNED_OUT, "outsider", "operator", *reversed(ROLES), *(f"key:{s}" for s in SCOPES)
)  # fmt: skip
SIGNS_IN = ("outsider", "operator", *ROLES)  # the callers with an access token
# The scope an API key needs where it is not read (GET) or write (everything else).
KEY_SCOPE = {("POST", "/api/v1/teams/{team_id}/analytics/events"): "ingest"}
NEW_PASSWORD = "another horse battery staple"


@dataclass(frozen=True)
class Call:
    """What one caller sends: path values, a body (JSON, form or raw), query, headers."""

    params: Mapping[str, Any] = field(default_factory=dict)
    json: Any = None
    form: Mapping[str, Any] | None = None
    data: bytes | None = None
    query: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Policy:
    access: str  # PUBLIC, LINK, SIGNED_IN, OPERATOR, or a team action (permissions.py)
    # What a caller sends, or how to make it for the caller (world, who) at call time.
    call: Call | Callable[[World, str], Call] = field(default_factory=Call)
    # A permitted caller's answer where it is not a 2xx (the route's own rule, not access).
    ok: Mapping[str, int] = field(default_factory=dict)
    subscription: str = "active"
    # A success leaves a job pending that turns the next caller's attempt into a 409, so
    # each permitted caller after the first gets a new team.
    one_shot: bool = False
    # The call changes the callers themselves (deletes or locks them out): new users.
    fresh_people: bool = False


# --- the world ---------------------------------------------------------------------------

PEOPLE = (*ROLES, "co_owner", "outsider", "bot", "operator")


@dataclass(frozen=True)
class Crowd:
    """The users behind the callers (by id: sessions come and go) and the credentials
    that never change: the expired token, the revoked one, and bot's API keys."""

    ids: dict[str, uuid.UUID]
    fixed: dict[str, Mapping[str, str]]


def make_crowd() -> Crowd:
    users = {name: make_user(name=name, admin=name == "operator") for name in PEOPLE}
    member, bot = users["member"], users["bot"]
    expired = create_access_token(str(member.id), expires_delta=timedelta(minutes=-5))
    logged_out = sessions.open_session(member, ip=None, user_agent="access-test")
    db.session.commit()
    sessions.end_session(member, logged_out.session_id, reason="logout")
    fixed: dict[str, Mapping[str, str]] = {
        "expired": bearer(expired),
        "revoked": bearer(logged_out.access_token),
    }
    for scope in SCOPES:
        fixed[f"key:{scope}"] = {"X-API-Key": make_api_key(bot, [scope], name=scope)}
    revoked = api_keys.create_api_key(bot, name="revoked", scopes=list(SCOPES), expires_at=None,
                                      current_password=PASSWORD, signed_in_at=None)  # fmt: skip
    api_keys.revoke_api_key(bot, revoked.key.id)
    fixed["key:revoked"] = {"X-API-Key": revoked.secret}
    return Crowd({name: user.id for name, user in users.items()}, fixed)


class World(TeamWorld):
    """One operation's world: a new team staffed by the crowd (bot as a second owner), a
    fresh session for everyone who signs in, and on demand what the calls point at."""

    def __init__(self, crowd: Crowd, subscription: str) -> None:
        people = {name: db.session.get_one(User, user_id) for name, user_id in crowd.ids.items()}
        super().__init__(subscription, people)
        self.join("bot", "owner")
        self.credentials: dict[str, Mapping[str, str]] = {"anonymous": {}, **crowd.fixed}
        for name in SIGNS_IN:
            pair = sessions.open_session(self.user(name), ip=None, user_agent="access-test")
            self.credentials[name] = bearer(pair.access_token)
        db.session.commit()

    def personal_team(self, name: str) -> uuid.UUID:
        found = db.session.scalar(
            select(Team.id)
            .join(TeamMember, TeamMember.team_id == Team.id)
            .where(TeamMember.user_id == self.users[name].id, Team.is_personal.is_(True))
        )
        assert found is not None
        return found

    def _make(self, source: str, who: str) -> Any:
        user = self.user_for(who)
        if source == "job":  # one of the caller's jobs, queued
            job = Job(id=uuid.uuid4(), type="maintenance.ping", queue="default", user_id=user.id)
            return _saved(job).id
        if source == "dead_job":
            now = datetime.now(UTC)
            return _saved(Job(
                id=uuid.uuid4(), type="maintenance.ping", queue="default", status="dead",
                attempts=3, max_attempts=3, error="Boom", finished_at=now, published_at=now,
            )).id  # fmt: skip
        if source == "api_key":
            spare = api_keys.create_api_key(
                user, name="spare", scopes=["read"], expires_at=None, current_password=PASSWORD,
                signed_in_at=None,
            )  # fmt: skip
            return spare.key.id
        if source == "session":  # another device of the caller's
            session_id = sessions.open_session(user, ip=None, user_agent="other").session_id
            db.session.commit()
            return session_id
        if source == "notification":
            ids = notifications.notify(
                [user.id], "token_reuse", {}, event_key=f"access:{uuid.uuid4()}", email=False
            )
            db.session.commit()
            return ids[0]
        if source == "lobby":  # a team that invites the callers (owned by the co-owner)
            lobby = make_team(self.user("co_owner"), "Lobby")
            give_plan(lobby, "business")
            return lobby
        if source in ("invitation", "any_invitation"):
            # To the caller's own address (to accept), or to anyone's (a link to decline).
            email = user.email if source == "invitation" else f"{uuid.uuid4().hex}@example.com"
            lobby = self.param("lobby", "co_owner")
            return tokens.mint_invite(
                invites.create_invite(self.user("co_owner"), lobby, email, "member")
            )
        if source == "newcomer":  # an account whose address is not verified yet
            newcomer = make_user(name="newcomer")
            newcomer.email_verified_at = None
            db.session.commit()
            return newcomer.id
        if source == "stored_file":
            key = f"access/{uuid.uuid4().hex}/hello.txt"
            get_storage().write(key, [b"hello"], content_type="text/plain")
            return key
        return super()._make(source, who)


def _saved(row: Job) -> Job:
    db.session.add(row)
    db.session.commit()
    return row


# --- the policies of the routes outside teams -------------------------------------------


@dataclass(frozen=True)
class Own:
    """Path parameter `name` is the caller's own `source` (their job, key, session...)."""

    name: str
    source: str

    json: Any = None

    def __call__(self, w: World, who: str) -> Call:
        return Call(params={self.name: w.param(self.source, who)}, json=self.json)


def _accept(w: World, who: str) -> Call:
    # An invitation to the caller's own address, one per address (a second is a 409): the
    # signed-out callers aim at the member's.
    return Call(params={"token": w.param("invitation", who if who in w.users else "member")})


def _login(w: World, who: str) -> Call:
    return Call(json={"email": w.user_for(who).email, "password": PASSWORD})


def _forgot(w: World, who: str) -> Call:
    return Call(json={"email": w.user_for(who).email})


def _register(w: World, who: str) -> Call:
    email = f"new-{uuid.uuid4().hex[:12]}@example.com"
    return Call(json={"email": email, "password": PASSWORD, "name": "Newcomer"})


def _refresh(w: World, who: str) -> Call:
    pair = sessions.open_session(w.user_for(who), ip=None, user_agent="access-test")
    db.session.commit()
    return Call(json={"refresh_token": pair.refresh_token})


def _reset(w: World, who: str) -> Call:
    # The newcomer forgot their password; a link is bound to the current one, so a new
    # link is minted for every caller (and each sets another password).
    user = db.session.get_one(User, w.param("newcomer", "-"))
    password = f"{NEW_PASSWORD} {uuid.uuid4().hex[:6]}"
    return Call(json={"token": tokens.mint_password_reset(user), "password": password})


def _verify(w: World, who: str) -> Call:
    user = db.session.get_one(User, w.param("newcomer", "-"))
    return Call(json={"token": tokens.mint_verify_email(user)})


def _resend_verification(w: World, who: str) -> Call:
    # A new link is only sent to an address not verified yet (else 409).
    w.user_for(who).email_verified_at = None
    db.session.commit()
    return Call()


def _unsubscribe(w: World, who: str) -> Call:
    token = notifications.unsubscribe_token(w.user_for(who).id, "invites")
    assert token is not None
    return Call(query={"token": token})


def _download(w: World, who: str) -> Call:
    link = get_storage().presigned_get(w.param("stored_file", "-"), expires_in=600)
    return Call(query=dict(parse_qsl(urlsplit(link).query)))


def _upload(w: World, who: str) -> Call:
    # A pending upload's link: once its file is complete the link takes no more (409).
    key = db.session.get_one(UserFile, w.param("pending_upload", who)).storage_key
    form = get_storage().presigned_post(key, content_type="image/png", max_size=100, expires_in=600)
    return Call(form={**form.fields, "file": (io.BytesIO(b"\x89PNG"), "a.png", "image/png")})


def _stripe_event(w: World, who: str) -> Call:
    event = {
        "id": f"evt_{uuid.uuid4().hex[:16]}", "object": "event",
        "type": "payment_intent.succeeded", "created": int(time.time()),
        "data": {"object": {"id": "pi_access", "object": "payment_intent", "status": "succeeded"}},
    }  # fmt: skip
    body, t = json.dumps(event).encode(), int(time.time())
    secret = current_app.config["SETTINGS"].stripe_webhook_secret.encode()
    digest = hmac.new(secret, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    headers = {"Stripe-Signature": f"t={t},v1={digest}", "Content-Type": "application/json"}
    return Call(data=body, headers=headers)


V1 = "/api/v1"
POLICIES: dict[tuple[str, str], Policy] = {
    ("GET", "/api"): Policy(PUBLIC),
    ("GET", "/healthz"): Policy(PUBLIC),
    ("GET", "/readyz"): Policy(PUBLIC),
    # Without METRICS_TOKEN (as here) loopback callers are answered: the test client is one.
    ("GET", "/metrics"): Policy(PUBLIC),
    ("GET", f"{V1}/plans"): Policy(PUBLIC),
    ("POST", f"{V1}/auth/register"): Policy(PUBLIC, _register),
    ("POST", f"{V1}/auth/login"): Policy(PUBLIC, _login),
    ("POST", f"{V1}/auth/refresh"): Policy(PUBLIC, _refresh),
    ("POST", f"{V1}/auth/verify-email"): Policy(PUBLIC, _verify),
    ("POST", f"{V1}/auth/password/forgot"): Policy(PUBLIC, _forgot),
    ("POST", f"{V1}/auth/password/reset"): Policy(PUBLIC, _reset),
    ("POST", f"{V1}/notifications/unsubscribe"): Policy(PUBLIC, _unsubscribe),
    ("GET", f"{V1}/storage/download"): Policy(PUBLIC, _download),
    ("POST", f"{V1}/storage/upload"): Policy(PUBLIC, _upload),
    ("POST", f"{V1}/webhooks/stripe"): Policy(PUBLIC, _stripe_event),
    ("POST", f"{V1}/invites/{{token}}/decline"): Policy(LINK, Own("token", "any_invitation")),
    ("POST", f"{V1}/invites/{{token}}/accept"): Policy(SIGNED_IN, _accept),
    ("POST", f"{V1}/auth/logout"): Policy(SIGNED_IN),
    ("POST", f"{V1}/auth/password/change"): Policy(
        SIGNED_IN,
        Call(json={"current_password": PASSWORD, "new_password": NEW_PASSWORD}),
        fresh_people=True,
    ),
    ("POST", f"{V1}/auth/verify-email/resend"): Policy(
        SIGNED_IN, _resend_verification, fresh_people=True
    ),
    ("GET", f"{V1}/auth/sessions"): Policy(SIGNED_IN),
    ("DELETE", f"{V1}/auth/sessions/{{session_id}}"): Policy(
        SIGNED_IN, Own("session_id", "session")
    ),
    ("GET", f"{V1}/auth/api-keys"): Policy(SIGNED_IN),
    # No current_password: every caller signed in a moment ago (World opens a session for
    # each, with a verified address), which is proof enough (test_credentials_security.py
    # has the callers for whom it is not).
    ("POST", f"{V1}/auth/api-keys"): Policy(
        SIGNED_IN, Call(json={"name": "ci", "scopes": ["read"]})
    ),
    ("DELETE", f"{V1}/auth/api-keys/{{key_id}}"): Policy(SIGNED_IN, Own("key_id", "api_key")),
    ("GET", f"{V1}/me"): Policy(SIGNED_IN),
    ("PATCH", f"{V1}/me"): Policy(SIGNED_IN, Call(json={"name": "Renamed"})),
    # An owner of a team with other members must hand it over first: 409.
    ("DELETE", f"{V1}/me"): Policy(SIGNED_IN, ok={"owner": 409}, fresh_people=True),
    ("GET", f"{V1}/me/settings"): Policy(SIGNED_IN),
    ("PATCH", f"{V1}/me/settings"): Policy(SIGNED_IN, Call(json={"settings": {"theme": "dark"}})),
    ("GET", f"{V1}/notifications"): Policy(SIGNED_IN),
    ("GET", f"{V1}/notifications/unread-count"): Policy(SIGNED_IN),
    ("POST", f"{V1}/notifications/read-all"): Policy(SIGNED_IN),
    ("POST", f"{V1}/notifications/{{notification_id}}/read"): Policy(
        SIGNED_IN, Own("notification_id", "notification")
    ),
    ("GET", f"{V1}/notifications/preferences"): Policy(SIGNED_IN),
    ("PUT", f"{V1}/notifications/preferences"): Policy(
        SIGNED_IN, Call(json={"preferences": {"invites": {"email": False}}})
    ),
    ("GET", f"{V1}/events/stream"): Policy(SIGNED_IN),
    ("POST", f"{V1}/events/token"): Policy(SIGNED_IN),
    ("GET", f"{V1}/jobs"): Policy(SIGNED_IN),
    ("GET", f"{V1}/jobs/{{job_id}}"): Policy(SIGNED_IN, Own("job_id", "job")),
    ("POST", f"{V1}/jobs/{{job_id}}/cancel"): Policy(SIGNED_IN, Own("job_id", "job")),
    ("GET", f"{V1}/teams"): Policy(SIGNED_IN),
    ("POST", f"{V1}/teams"): Policy(SIGNED_IN, Call(json={"name": "Another team"})),
    ("GET", f"{V1}/admin/jobs"): Policy(OPERATOR),
    ("GET", f"{V1}/admin/jobs/{{job_id}}"): Policy(OPERATOR, Own("job_id", "dead_job")),
    ("POST", f"{V1}/admin/jobs/{{job_id}}/retry"): Policy(OPERATOR, Own("job_id", "dead_job")),
    ("POST", f"{V1}/admin/jobs/{{job_id}}/discard"): Policy(
        OPERATOR, Own("job_id", "dead_job", json={})
    ),
    ("POST", f"{V1}/admin/jobs/retry"): Policy(OPERATOR, Call(json={"type": "maintenance.ping"})),
    ("POST", f"{V1}/admin/jobs/ping"): Policy(OPERATOR, Call(json={"sleep_seconds": 0})),
}


def _team_policy(case: Case) -> Policy:
    def call(w: World, who: str) -> Call:
        return Call(
            params=w.path_values(case, who), json=w.body(case, who), headers=w.headers(case),
            query=dict(parse_qsl(case.query.removeprefix("?"))),
        )  # fmt: skip

    # Every subscription change, and the team's deletion, runs as a job the next request
    # has to wait for.
    busy = case.method != "GET" and ("/subscription" in case.rule or case.action == "team.delete")
    return Policy(case.action, call, subscription=case.subscription, one_shot=busy)


CASES: dict[tuple[str, str], list[Policy]] = {}
for _case in MATRIX:
    CASES.setdefault((_case.method, _case.path), []).append(_team_policy(_case))
for _key, _policy in POLICIES.items():
    CASES.setdefault(_key, []).append(_policy)


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


@pytest.fixture(scope="module")
def crowd(app: APIFlask) -> Iterator[Crowd]:
    with app.app_context():
        made = make_crowd()
    yield made
    with app.app_context():
        truncate_all_tables()
        limiter.reset()


@pytest.fixture(autouse=True)
def _isolated(app: APIFlask) -> Iterator[None]:
    """Replaces conftest's `_isolated`, whose emptying of every table after each test
    would be most of this module's time: each operation builds a team and objects of its
    own, so what one leaves behind cannot change another's answers. `crowd` empties the
    tables once, after the module."""
    with app.app_context():
        yield
        db.session.remove()


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


def test_a_doc_decorator_above_an_auth_guard_keeps_the_operations_security() -> None:
    """APIFlask's `@doc(...)` writes `security=None` into the view it decorates; placed
    above `@auth_required`, it documented guarded operations as open to anyone."""
    app = APIFlask(__name__)
    register_openapi(app)  # as create_app does: it writes the guards' security out

    @app.post("/guarded")
    @app.doc(responses={409: "A conflict of this route's own"})
    @auth_required
    def guarded() -> dict[str, str]:
        return {}

    @app.post("/operators")
    @app.doc(responses={409: "Another one"})
    @admin_required
    def operators() -> dict[str, str]:
        return {}

    spec = app.spec
    assert isinstance(spec, dict)
    paths = spec["paths"]
    assert paths["/guarded"]["post"]["security"] == [{"BearerAuth": []}, {"ApiKeyAuth": []}]
    assert paths["/operators"]["post"]["security"] == [{"BearerAuth": []}]
    assert "409" in paths["/guarded"]["post"]["responses"]


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
