"""Every team-scoped route x every kind of caller, checked against the permission table.

The expected answer is computed from `services.permissions`, never written by hand:
allowed -> 2xx, a member whose role is too weak -> 403, a non-member -> 404, nobody
signed in -> 401. A route under /api/v1/teams/<team_id> missing from MATRIX fails
`test_every_team_route_is_in_the_matrix`, so a new route cannot skip this check.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from apiflask import APIFlask
from flask.testing import FlaskClient

from extensions import db
from models import Export, InventoryItem, Payment
from models.file import UserFile
from models.team import ROLES
from services import invites, permissions
from tests.factories import auth_headers, give_plan, make_team, make_user
from tests.support import ROOT

TEAM = "/api/v1/teams/<uuid:team_id>"
CALLERS = (*ROLES, "outsider", "anonymous")


@dataclass(frozen=True)
class Case:
    method: str
    rule: str  # exactly as in app.url_map
    action: str  # the permission the route needs (from services/permissions.py)
    body: dict[str, Any] | None = None
    # Which world object fills each path parameter other than team_id.
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    # The team's subscription in this case's world: "active" (business, so the world's
    # seven members and an invitation fit), "ending" (set to cancel), or "none" (free).
    subscription: str = "active"
    query: str = ""  # appended to the URL, e.g. "?q=acme"

    @property
    def id(self) -> str:
        return f"{self.method} {self.rule.removeprefix(TEAM) or '/'} [{self.action}]"


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
        "POST", f"{TEAM}/invites", "invites.create", {"email": "new@example.com", "role": "viewer"}
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
        headers={"Idempotency-Key": "matrix-pay"},
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
    Case("POST", f"{TEAM}/inventory", "inventory.write", {"sku": "NEW-1", "name": "New"}),
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


def expected(caller: str, action: str) -> int | str:
    if caller == "anonymous":
        return 401
    if caller == "outsider":
        return 404
    return "2xx" if permissions.allows(caller, action) else 403


@pytest.fixture
def world(app: APIFlask, case: Case) -> dict[str, Any]:
    """A team with one user per role, a second owner (so the owner may leave), a plain
    member to act on, an open invitation, a paid plan (unless the case wants none), and a
    user from outside the team."""
    users = {name: make_user(name=name) for name in ("owner", "admin", "member", "viewer")}
    users.update(co_owner=make_user(), target=make_user(), outsider=make_user())
    team_id = make_team(
        users["owner"],
        members=[
            (users["admin"], "admin"), (users["member"], "member"), (users["viewer"], "viewer"),
            (users["co_owner"], "owner"), (users["target"], "member"),
        ],
    )  # fmt: skip
    subscription = give_plan(team_id, "business")
    invite = invites.create_invite(users["owner"], team_id, "pending@example.com", "member")
    if case.subscription == "none":
        subscription.status = "canceled"
    elif case.subscription == "ending":
        subscription.cancel_at_period_end = True
    payment = Payment(
        id=uuid.uuid4(), team_id=team_id, created_by_id=users["owner"].id, amount=2000,
        currency="USD", status="succeeded", provider_payment_id=f"pi_matrix_{uuid.uuid4().hex}",
    )  # fmt: skip
    # A ready export (its download answers a redirect to the file's signed URL).
    export = Export(
        id=uuid.uuid4(), team_id=team_id, requested_by_id=users["owner"].id, resource="inventory",
        format="csv", storage_key=f"teams/{team_id}/exports/matrix.csv", row_count=0, size=0,
        sha256="0" * 64, finished_at=datetime.now(UTC),
        expires_at=datetime.now(UTC) + timedelta(days=1),
    )  # fmt: skip
    # A ready file per role (members may delete their own) and a pending one to complete.
    uploads = {
        name: _user_file(team_id, users[name].id, "ready")
        for name in ("owner", "admin", "member", "viewer")
    }
    pending_upload = _user_file(team_id, users["owner"].id, "pending")
    item = InventoryItem(id=uuid.uuid4(), team_id=team_id, sku="MATRIX-1", name="Matrix",
                         quantity=10)  # fmt: skip
    db.session.add_all([payment, export, *uploads.values(), pending_upload, item])
    db.session.commit()
    return {"team_id": team_id, "users": users, "invite_id": invite.id, "payment_id": payment.id,
            "export_id": export.id, "uploads": uploads,
            "pending_upload_id": pending_upload.id, "item_id": item.id}  # fmt: skip


def _user_file(team_id: uuid.UUID, user_id: uuid.UUID, state: str) -> UserFile:
    file_id = uuid.uuid4()
    return UserFile(
        id=file_id, team_id=team_id, uploaded_by_id=user_id, filename="f.png",
        content_type="image/png", size=100, state=state,
        storage_key=f"teams/{team_id}/uploads/{file_id}/original",
    )  # fmt: skip


def _url(case: Case, world: dict[str, Any], caller: str) -> str:
    values = {"team_id": world["team_id"], "invite_id": world["invite_id"]}
    users = world["users"]
    for name, source in case.params.items():
        if source == "target":
            values[name] = users["target"].id
        elif source == "caller":
            # Anonymous and outsiders "leave" as some member would: their id is not theirs.
            values[name] = users[caller].id if caller in users else users["member"].id
        elif source == "invite":
            values[name] = world["invite_id"]
        elif source == "payment":
            values[name] = world["payment_id"]
        elif source == "export":
            values[name] = world["export_id"]
        elif source == "upload":
            values[name] = world["uploads"]["owner"].id
        elif source == "item":
            values[name] = world["item_id"]
        elif source == "pending_upload":
            values[name] = world["pending_upload_id"]
        elif source == "own_upload":
            # Outsiders and anonymous callers aim at a member's file: it is not theirs.
            values[name] = world["uploads"].get(caller, world["uploads"]["member"]).id
    return re.sub(r"<(?:\w+:)?(\w+)>", lambda m: str(values[m.group(1)]), case.rule)


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("case", MATRIX, ids=lambda c: c.id)
def test_route_answers_as_the_permission_table_says(
    client: FlaskClient, world: dict[str, Any], case: Case, caller: str
) -> None:
    headers = {} if caller == "anonymous" else dict(auth_headers(world["users"][caller]))
    headers.update(case.headers)
    body = None
    if case.body is not None:
        body = {
            k: str(world["users"]["target"].id) if v == "<target>" else v
            for k, v in case.body.items()
        }
    response = client.open(
        _url(case, world, caller) + case.query, method=case.method, json=body, headers=headers
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
