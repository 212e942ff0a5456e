"""Team search: prefix matching, ranking, highlights, team bounds and per-type permissions."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from flask.testing import FlaskClient

from extensions import db
from services.billing import payments
from services.insights import search
from tests.factories import auth_headers, make_team, make_user


def _url(team_id: uuid.UUID) -> str:
    return f"/api/v1/teams/{team_id}/search"


@pytest.fixture
def teams(client: FlaskClient) -> dict[str, Any]:
    """Team A (owner, admin, viewer) with three widgets; team B with one "Blue Widget"."""
    users = {role: make_user(name=role) for role in ("owner", "admin", "viewer", "other")}
    a = make_team(users["owner"], "A", members=[(users["admin"], "admin"),
                                                (users["viewer"], "viewer")])  # fmt: skip
    b = make_team(users["other"], "B")
    items = {}
    for sku, name in (("W-1", "Widget Blue Large"), ("W-2", "Blue Widget Deluxe"),
                      ("W-3", "Blue Widget")):  # fmt: skip
        response = client.post(
            f"/api/v1/teams/{a}/inventory",
            json={"sku": sku, "name": name, "description": f"A {name.lower()} for testing."},
            headers=auth_headers(users["owner"]),
        )
        assert response.status_code == 201, response.get_data(as_text=True)
        items[name] = response.get_json()["item"]["id"]
    response = client.post(
        f"/api/v1/teams/{b}/inventory",
        json={"sku": "W-3", "name": "Blue Widget"},
        headers=auth_headers(users["other"]),
    )
    assert response.status_code == 201
    return {"a": a, "b": b, "users": users, "items": items, "b_item": response.get_json()["item"]}


def _search(client: FlaskClient, teams: dict[str, Any], who: str = "owner", **params: Any) -> Any:
    response = client.get(_url(teams["a"]), query_string=params,
                          headers=auth_headers(teams["users"][who]))  # fmt: skip
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert body["next_cursor"] is None
    return body["items"]


def test_exact_title_first_and_only_own_team(client: FlaskClient, teams: dict[str, Any]) -> None:
    items = _search(client, teams, q="blue widget", type="inventory")
    assert items[0]["title"] == "Blue Widget"
    assert {i["id"] for i in items} == set(teams["items"].values())
    assert teams["b_item"]["id"] not in {i["id"] for i in items}
    assert all(i["type"] == "inventory" and i["rank"] > 0 for i in items)
    assert all("«" in i["snippet"] and "»" in i["snippet"] for i in items)


def test_prefix_terms_match(client: FlaskClient, teams: dict[str, Any]) -> None:
    items = _search(client, teams, q="wid", type="inventory")
    assert {i["id"] for i in items} == set(teams["items"].values())
    assert "«Widget»" in items[0]["snippet"]
    assert _search(client, teams, q="blu larg!")[0]["title"] == "Widget Blue Large"


def test_empty_query_is_422(client: FlaskClient, teams: dict[str, Any]) -> None:
    response = client.get(_url(teams["a"]), query_string={"q": "!!! --"},
                          headers=auth_headers(teams["users"]["owner"]))  # fmt: skip
    assert response.status_code == 422
    assert response.mimetype == "application/problem+json"


def test_type_filter_and_members(client: FlaskClient, teams: dict[str, Any]) -> None:
    owner = _search(client, teams, q="owner", type="member")
    assert [(m["type"], m["title"]) for m in owner] == [("member", "owner")]
    assert _search(client, teams, q="blue", type="member") == []
    assert {i["type"] for i in _search(client, teams, q="blue")} == {"inventory"}
    # A role change (re)indexes the membership; leaving removes it.
    viewer = teams["users"]["viewer"]
    members = f"/api/v1/teams/{teams['a']}/members/{viewer.id}"
    admin = auth_headers(teams["users"]["admin"])
    assert client.patch(members, json={"role": "member"}, headers=admin).status_code == 200
    found = _search(client, teams, q=viewer.email.split("@")[0], type="member")
    assert [m["title"] for m in found] == ["viewer"]
    assert client.delete(members, headers=auth_headers(viewer)).status_code == 204
    assert _search(client, teams, q="viewer", type="member") == []


def test_payments_only_for_roles_that_read_them(client: FlaskClient, teams: dict[str, Any]) -> None:
    payment, _ = payments.create_payment(
        teams["users"]["admin"], teams["a"], amount=1250, currency="USD",
        description="Blue widget invoice", payment_method="pm_card_visa",
        idempotency_key=str(uuid.uuid4()),
    )  # fmt: skip
    found = _search(client, teams, who="admin", q="invoice")
    assert [(i["type"], i["id"]) for i in found] == [("payment", str(payment.id))]
    assert "«1250» USD" in _search(client, teams, who="admin", q="1250")[0]["snippet"]
    assert _search(client, teams, who="viewer", q="invoice") == []
    assert _search(client, teams, who="viewer", q="invoice", type="payment") == []
    viewer_types = {i["type"] for i in _search(client, teams, who="viewer", q="blue widget")}
    assert viewer_types == {"inventory"}


def test_non_member_gets_404(client: FlaskClient, teams: dict[str, Any]) -> None:
    response = client.get(_url(teams["a"]), query_string={"q": "blue"},
                          headers=auth_headers(teams["users"]["other"]))  # fmt: skip
    assert response.status_code == 404
    assert response.get_json()["detail"] == "No such team."


def test_update_and_delete_keep_the_index(client: FlaskClient, teams: dict[str, Any]) -> None:
    owner = auth_headers(teams["users"]["owner"])
    deluxe = teams["items"]["Blue Widget Deluxe"]
    base = f"/api/v1/teams/{teams['a']}/inventory"
    assert (
        client.patch(f"{base}/{deluxe}", json={"name": "Red Gadget"}, headers=owner).status_code
        == 200
    )
    assert [i["id"] for i in _search(client, teams, q="gadget")] == [deluxe]
    exact = teams["items"]["Blue Widget"]
    assert client.delete(f"{base}/{exact}", headers=owner).status_code == 204
    remaining = {i["id"] for i in _search(client, teams, q="blue widget")}
    # The renamed item still matches through its description (body).
    assert remaining == {teams["items"]["Widget Blue Large"], deluxe}


def test_uploaded_text_is_found_as_a_file(client: FlaskClient, teams: dict[str, Any]) -> None:
    # The same helper services.files.upload_verification calls once a text upload is verified.
    file_id = uuid.uuid4()
    search.index_document(teams["a"], "file", file_id, "notes.txt", "The blue widget manual.")
    db.session.commit()
    files = _search(client, teams, who="viewer", q="manual")
    assert [(i["type"], i["id"], i["title"]) for i in files] == [
        ("file", str(file_id), "notes.txt")
    ]
    assert "«manual»" in files[0]["snippet"]
