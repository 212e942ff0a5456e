"""Fixtures for fuzzing the API in-process with schemathesis.

Every case runs as a real, signed-in user who owns a team with one other member, so
team-scoped routes get past the guard instead of answering 404 to everything.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass

import pytest
import schemathesis
from apiflask import APIFlask
from schemathesis import BaseSchema
from sqlalchemy import select

from blueprints.common.ratelimits import limiter
from extensions import db
from models import ApiKey, TeamMember, User
from services.identity import sessions
from tests.factories import make_api_key, make_team, make_user, verify_email
from tests.fuzz import profile

# Operations not fuzzed, and why (each still has ordinary tests):
EXCLUDED = {
    # A successful stream never ends (heartbeats until EVENTS_MAX_STREAM_SECONDS), so a
    # generated request that gets past authentication would hang the run; its errors and
    # token handling are covered in tests/blueprints/events/test_events.py.
    ("GET", "/api/v1/events/stream"),
}


def fuzz_config() -> schemathesis.Config:
    """Schemathesis settings for the current profile (tests/fuzz/profile.py)."""
    current = profile.current()
    return schemathesis.Config.from_dict(
        {
            "generation": {
                "max-examples": current.examples,
                # No .hypothesis directory: each run explores afresh from its seed.
                "database": "none",
                # CI's short profile draws the same inputs on every run (a verdict on the
                # change, not on the draw); `make fuzz` explores afresh each time. A random
                # CI draw once sent `?q=a&q=b` to a single-valued `q` and called the 200
                # a failure: Werkzeug takes the first value, as most HTTP stacks do.
                "deterministic": current.name == "ci",
                # Cases carry the principal's real credentials (tests below); schemathesis'
                # `ignored_auth` check still sends each operation without them.
                "with-security-parameters": False,
                # Unknown *query* parameters are ignored by design (cache busters, the utm_*
                # a mail client appends to an unsubscribe link), so a case whose only fault
                # is an extra one is not an error. This also stops schemathesis adding extra
                # body fields; that bodies refuse those (422) is
                # tests/blueprints/common/test_errors.py's.
                "allow-extra-parameters": False,
            },
            "checks": {
                # Not applicable here: a request valid by the schema may still break a rule
                # no JSON Schema can state (a wrong current password, an unknown one-time
                # token, a cursor we did not issue, `to` before `from`, a float like 318.0
                # where money must be an integer, an email domain reserved by RFC 6761), and
                # the API rightly answers 422. Those 422s are documented problem+json, which
                # the other checks verify; rules a schema *can* state are in the schemas.
                "positive_data_acceptance": {"enabled": False},
                # Not applicable either: DELETE here often does not remove at once. Deleting
                # a team, an upload or the account answers 202 and a job removes it later, and
                # DELETE .../subscription cancels at the period's end, so the resource is
                # rightly still readable afterwards; tests/blueprints cover each deletion.
                "use_after_free": {"enabled": False},
            },
            "phases": {"stateful": {"max-steps": current.steps}},
        }
    )


@dataclass
class Principal:
    """The fuzzing user, their team, a second member, and an API key of theirs."""

    user: User
    team_id: uuid.UUID
    member_id: uuid.UUID
    api_key: str

    def bearer(self) -> Mapping[str, str]:
        """A fresh sign-in for every case: a case that logs out must not doom the next."""
        pair = sessions.open_session(self.user, ip="127.0.0.1", user_agent="schemathesis")
        db.session.commit()
        return {"Authorization": f"Bearer {pair.access_token}"}

    def api_key_header(self) -> Mapping[str, str]:
        return {"X-API-Key": self.api_key}

    @property
    def team(self) -> str:
        return str(self.team_id)

    def team_ids(self) -> set[str]:
        """Every team the principal belongs to now (scenarios create teams too)."""
        rows = db.session.scalars(
            select(TeamMember.team_id).where(TeamMember.user_id == self.user.id)
        )
        return {str(team_id) for team_id in rows}

    def is_intact(self) -> bool:
        """Whether earlier cases left the principal as made: still active, still the team's
        owner with its member, the key unrevoked (a case may delete any of them)."""
        db.session.rollback()  # see what other connections committed
        owner = db.session.get(User, self.user.id, populate_existing=True)
        roles = dict(
            db.session.execute(
                select(TeamMember.user_id, TeamMember.role).where(
                    TeamMember.team_id == self.team_id
                )
            ).all()
        )
        key_ok = db.session.scalar(
            select(ApiKey.id).where(ApiKey.user_id == self.user.id, ApiKey.revoked_at.is_(None))
        )
        return bool(
            owner is not None
            and owner.is_active
            and owner.deleted_at is None
            and roles.get(self.user.id) == "owner"
            and self.member_id in roles
            and key_ok
        )

    def path_parameters(self) -> dict[str, str]:
        """Values for path parameters that name the principal's own resources."""
        return {"team_id": str(self.team_id), "user_id": str(self.member_id)}


def make_principal() -> Principal:
    owner = verify_email(make_user(name="Fuzz Owner"))
    member = make_user(name="Fuzz Member")
    team_id = make_team(owner, name="Fuzz team", members=[(member, "member")])
    secret = make_api_key(owner, ["read", "write", "ingest"], name="fuzz")
    return Principal(owner, team_id, member.id, secret)


@pytest.fixture
def principal(app: APIFlask) -> Principal:
    return make_principal()


@pytest.fixture(scope="session")
def fuzz_schema(app: APIFlask) -> BaseSchema:
    schema: BaseSchema = schemathesis.openapi.from_wsgi("/openapi.json", app, config=fuzz_config())
    for method, path in EXCLUDED:
        schema = schema.exclude(method=method, path=path)
    return schema


def fresh_rate_limits() -> None:
    """Rate-limit counters are state too: without this, a few hundred cases in, every
    response would be a (correct, documented) 429 and the fuzzer would learn nothing."""
    limiter.reset()
