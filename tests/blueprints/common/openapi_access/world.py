"""The world of the OpenAPI access tests: a crowd of callers, the objects each operation
acts on, the policies of the routes outside teams, and sending one call as one caller.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from flask import current_app
from flask_jwt_extended import create_access_token
from sqlalchemy import select

from extensions import db
from integrations.storage_backends import get_storage
from models import Job, Team, TeamMember, User, UserFile
from models.team import ROLES
from services.core import tokens
from services.identity import api_keys, sessions
from services.identity.api_keys import SCOPES
from services.messaging import notifications
from services.teams import invites
from tests.blueprints.common.access import MATRIX, Case, TeamWorld
from tests.factories import PASSWORD, give_plan, make_api_key, make_team, make_user
from tests.support import bearer

PUBLIC = "public"  # anyone; credentials sent along are ignored
LINK = "link"  # anyone holding an emailed link; credentials sent along are checked
SIGNED_IN = "signed-in"  # any signed-in user, acting on their own things
OPERATOR = "operator"  # users with the `is_admin` flag only
SIGNS_IN = ("outsider", "operator", *ROLES)  # the callers with an access token
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
