"""World-building for the access tests: the team-route cases and a team with every role.

`tests/blueprints/common/test_access_matrix.py` checks each case in a world of its own per
caller; `tests/blueprints/common/test_openapi_access.py` checks every operation of the OpenAPI
document with every kind of caller, one world per operation. Both take the expected
answer from `services.core.permissions`, never write it by hand.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from extensions import db
from models import Export, InventoryItem, Payment, User
from models.file import UserFile
from models.team import ROLES
from services.teams import invites
from tests.factories import add_member, give_plan, make_team, make_user

TEAM = "/api/v1/teams/<uuid:team_id>"


@dataclass(frozen=True)
class Case:
    method: str
    rule: str  # exactly as in app.url_map
    action: str  # the permission the route needs (from services/core/permissions.py)
    # Strings may hold "<target>" (a member to act on) or "<unique>" (new for each caller;
    # in headers too: a payment's Idempotency-Key is unique in its team).
    body: dict[str, Any] | None = None
    # Which world object fills each path parameter other than team_id (see TeamWorld.param).
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    # The team's subscription in this case's world: "active" (business, so every member
    # and invitation fits), "ending" (set to cancel), or "none" (free).
    subscription: str = "active"
    query: str = ""  # appended to the URL, e.g. "?q=acme"

    @property
    def id(self) -> str:
        return f"{self.method} {self.rule.removeprefix(TEAM) or '/'} [{self.action}]"

    @property
    def path(self) -> str:
        """The rule as the OpenAPI document writes it (`{team_id}`, not `<uuid:team_id>`)."""
        return re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", self.rule)


MATRIX = (
    Case("GET", TEAM, "team.read"),
    Case("PATCH", TEAM, "team.update", {"name": "Renamed"}),
    Case("DELETE", TEAM, "team.delete"),
    Case("POST", f"{TEAM}/transfer-ownership", "ownership.transfer", {"user_id": "<target>"}),
    Case("GET", f"{TEAM}/members", "members.read"),
    Case(
        "PATCH",
        f"{TEAM}/members/<uuid:user_id>",
        "members.update_role",
        {"role": "viewer"},
        {"user_id": "target"},
    ),
    Case("DELETE", f"{TEAM}/members/<uuid:user_id>", "members.remove", None, {"user_id": "target"}),
    Case("DELETE", f"{TEAM}/members/<uuid:user_id>", "members.leave", None, {"user_id": "caller"}),
    Case("GET", f"{TEAM}/invites", "invites.read"),
    Case(
        "POST",
        f"{TEAM}/invites",
        "invites.create",
        {"email": "new-<unique>@example.com", "role": "viewer"},
    ),
    Case(
        "DELETE",
        f"{TEAM}/invites/<uuid:invite_id>",
        "invites.revoke",
        None,
        {"invite_id": "invite"},
    ),
    Case(
        "POST",
        f"{TEAM}/invites/<uuid:invite_id>/resend",
        "invites.create",
        None,
        {"invite_id": "invite"},
    ),
    Case("GET", f"{TEAM}/audit-logs", "audit.read"),
    Case("GET", f"{TEAM}/audit-logs/verify", "audit.read"),
    Case("GET", f"{TEAM}/subscription", "subscription.read"),
    Case(
        "POST",
        f"{TEAM}/subscription",
        "subscription.manage",
        {"plan": "pro", "payment_method": "pm_card_visa"},
        headers={"Idempotency-Key": "matrix-subscribe"},
        subscription="none",
    ),
    Case("PATCH", f"{TEAM}/subscription", "subscription.manage", {"plan": "pro"}),
    Case("DELETE", f"{TEAM}/subscription", "subscription.manage"),
    Case(
        "POST",
        f"{TEAM}/subscription/resume",
        "subscription.manage",
        subscription="ending",
    ),
    Case("GET", f"{TEAM}/payments", "payments.read"),
    Case(
        "POST",
        f"{TEAM}/payments",
        "payments.create",
        {"amount": 1500, "currency": "USD", "payment_method": "pm_card_visa"},
        headers={"Idempotency-Key": "matrix-pay-<unique>"},
    ),
    Case(
        "GET",
        f"{TEAM}/payments/<uuid:payment_id>",
        "payments.read",
        None,
        {"payment_id": "payment"},
    ),
    Case(
        "POST",
        f"{TEAM}/payments/<uuid:payment_id>/refunds",
        "payments.refund",
        {"amount": 500},
        {"payment_id": "payment"},
        headers={"Idempotency-Key": "matrix-refund"},
    ),
    Case("POST", f"{TEAM}/exports", "exports.create", {"resource": "inventory", "format": "csv"}),
    Case("GET", f"{TEAM}/exports", "exports.read"),
    Case("GET", f"{TEAM}/exports/<uuid:export_id>", "exports.read", None, {"export_id": "export"}),
    Case(
        "GET",
        f"{TEAM}/exports/<uuid:export_id>/download",
        "exports.read",
        None,
        {"export_id": "export"},
    ),
    Case("GET", f"{TEAM}/uploads", "files.read"),
    Case(
        "POST",
        f"{TEAM}/uploads",
        "files.upload",
        {"filename": "a.png", "content_type": "image/png", "size": 100},
    ),
    Case("GET", f"{TEAM}/uploads/<uuid:file_id>", "files.read", None, {"file_id": "upload"}),
    Case(
        "POST",
        f"{TEAM}/uploads/<uuid:file_id>/complete",
        "files.upload",
        None,
        {"file_id": "pending_upload"},
    ),
    Case(
        "GET", f"{TEAM}/uploads/<uuid:file_id>/download", "files.read", None, {"file_id": "upload"}
    ),
    # Someone else's file (the owner's) needs `files.delete`; your own, `files.upload`.
    Case("DELETE", f"{TEAM}/uploads/<uuid:file_id>", "files.delete", None, {"file_id": "upload"}),
    Case(
        "DELETE", f"{TEAM}/uploads/<uuid:file_id>", "files.upload", None, {"file_id": "own_upload"}
    ),
    Case(
        "POST",
        f"{TEAM}/analytics/events",
        "analytics.ingest",
        {"events": [{"name": "matrix.ping", "occurred_at": datetime.now(UTC).isoformat()}]},
    ),
    Case(
        "GET",
        f"{TEAM}/analytics/metrics",
        "analytics.read",
        query="?name=builtin.payments.count&from=2026-01-01T00:00:00Z&to=2026-01-02T00:00:00Z",
    ),
    Case("POST", f"{TEAM}/analytics/aggregate", "analytics.aggregate", {}),
    Case("GET", f"{TEAM}/inventory", "inventory.read"),
    Case("POST", f"{TEAM}/inventory", "inventory.write", {"sku": "NEW-<unique>", "name": "New"}),
    Case("GET", f"{TEAM}/inventory/<uuid:item_id>", "inventory.read", None, {"item_id": "item"}),
    Case(
        "PATCH",
        f"{TEAM}/inventory/<uuid:item_id>",
        "inventory.write",
        {"name": "Renamed"},
        {"item_id": "item"},
    ),
    Case(
        "DELETE", f"{TEAM}/inventory/<uuid:item_id>", "inventory.delete", None, {"item_id": "item"}
    ),
    Case(
        "POST",
        f"{TEAM}/inventory/<uuid:item_id>/adjustments",
        "inventory.write",
        {"delta": -1, "reason": "matrix"},
        {"item_id": "item"},
    ),
    Case(
        "GET",
        f"{TEAM}/inventory/<uuid:item_id>/adjustments",
        "inventory.read",
        None,
        {"item_id": "item"},
    ),
    Case("GET", f"{TEAM}/search", "team.read", query="?q=acme"),
    Case("GET", f"{TEAM}/dashboard", "dashboard.read"),
)


def fill(template: str, values: dict[str, Any]) -> str:
    """A URL from a Flask rule (`<uuid:x>`) or an OpenAPI path (`{x}`) and its values."""
    return re.sub(
        r"<(?:\w+:)?(\w+)>|\{(\w+)\}", lambda m: str(values[m.group(1) or m.group(2)]), template
    )


class TeamWorld:
    """A team with one user per role, a second owner (so the owner may leave), a paid plan
    (unless told otherwise), and an outsider whose only team is their personal one.

    The objects path parameters point at (a payment, an item, a member to remove...) are
    made on first use, one per caller: what one caller does to theirs (delete it, say)
    never changes what the next caller finds.
    """

    def __init__(
        self, subscription: str = "active", people: Mapping[str, User] | None = None
    ) -> None:
        """`people`: the users to staff it with, by name (owner, admin, member, viewer,
        co_owner, outsider, and any others the caller wants at hand); new ones if None."""
        if people is None:
            names = (*ROLES, "co_owner", "outsider")
            people = {name: make_user(name=name.replace("_", "-")) for name in names}
        self.users: dict[str, User] = dict(people)
        self.team_id = make_team(self.users["owner"])
        self.roles = {"owner": "owner"}
        for name, role in (("admin", "admin"), ("member", "member"), ("viewer", "viewer"),
                           ("co_owner", "owner")):  # fmt: skip
            self.join(name, role)
        plan = give_plan(self.team_id, "business")
        if subscription == "none":
            plan.status = "canceled"
        elif subscription == "ending":
            plan.cancel_at_period_end = True
        db.session.commit()
        self._made: dict[tuple[str, str], Any] = {}

    def join(self, name: str, role: str) -> None:
        """Put the world's user `name` in the team with `role`."""
        add_member(self.team_id, self.users[name], role)
        self.roles[name] = role

    def user(self, name: str) -> User:
        """The world's user `name`, as committed now (requests may close the session)."""
        return db.session.get_one(User, self.users[name].id)

    def user_for(self, who: str) -> User:
        """The user acting as `who`; anonymous callers aim at a member's things."""
        return self.user(who if who in self.users else "member")

    def _member_for(self, who: str) -> User:
        return self.user(who if who in self.roles else "member")

    def path_values(self, case: Case, who: str) -> dict[str, Any]:
        values: dict[str, Any] = {"team_id": self.team_id}
        for name, source in case.params.items():
            values[name] = self.param(source, who)
        return values

    def body(self, case: Case, who: str) -> dict[str, Any] | None:
        if case.body is None:
            return None
        unique = uuid.uuid4().hex[:12]
        return {
            k: str(self.param("target", who)) if v == "<target>"
            else v.replace("<unique>", unique) if isinstance(v, str) else v
            for k, v in case.body.items()
        }  # fmt: skip

    def headers(self, case: Case) -> dict[str, str]:
        unique = uuid.uuid4().hex[:12]
        return {k: v.replace("<unique>", unique) for k, v in case.headers.items()}

    def param(self, source: str, who: str) -> Any:
        """The id `source` names, made for `who` on first use."""
        if (source, who) not in self._made:
            self._made[(source, who)] = self._make(source, who)
        return self._made[(source, who)]

    def _make(self, source: str, who: str) -> uuid.UUID:
        if source == "caller":  # outsiders and anonymous "leave" as a member would
            return self.user_for(who).id
        if source == "target":
            target = make_user(name="target")
            add_member(self.team_id, target, "member")
            return target.id
        if source == "invite":
            email = f"pending-{uuid.uuid4().hex[:8]}@example.com"
            return invites.create_invite(self.user("owner"), self.team_id, email, "member").id
        owner_id = self.users["owner"].id
        row: Any
        if source == "payment":
            row = Payment(
                id=uuid.uuid4(), team_id=self.team_id, created_by_id=owner_id, amount=2000,
                currency="USD", status="succeeded",
                provider_payment_id=f"pi_matrix_{uuid.uuid4().hex}",
            )  # fmt: skip
        elif source == "export":
            # A ready export (its download answers a redirect to the file's signed URL).
            row = Export(
                id=uuid.uuid4(), team_id=self.team_id, requested_by_id=owner_id,
                resource="inventory", format="csv", row_count=0, size=0, sha256="0" * 64,
                storage_key=f"teams/{self.team_id}/exports/{uuid.uuid4()}.csv",
                finished_at=datetime.now(UTC), expires_at=datetime.now(UTC) + timedelta(days=1),
            )  # fmt: skip
        elif source == "upload":  # the owner's file
            row = _user_file(self.team_id, owner_id, "ready")
        elif source == "own_upload":  # the caller's own file (a member's for outsiders)
            row = _user_file(self.team_id, self._member_for(who).id, "ready")
        elif source == "pending_upload":
            row = _user_file(self.team_id, owner_id, "pending")
        elif source == "item":
            row = InventoryItem(id=uuid.uuid4(), team_id=self.team_id, quantity=10,
                                sku=f"MATRIX-{uuid.uuid4().hex[:8]}", name="Matrix")  # fmt: skip
        else:
            raise KeyError(f"no world object called {source!r}")
        db.session.add(row)
        db.session.commit()
        return uuid.UUID(str(row.id))


def _user_file(team_id: uuid.UUID, user_id: uuid.UUID, state: str) -> UserFile:
    file_id = uuid.uuid4()
    return UserFile(
        id=file_id, team_id=team_id, uploaded_by_id=user_id, filename="f.png",
        content_type="image/png", size=100, state=state,
        storage_key=f"teams/{team_id}/uploads/{file_id}/original",
    )  # fmt: skip
