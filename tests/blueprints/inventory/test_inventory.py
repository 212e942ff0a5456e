"""Inventory: items CRUD, the stock ledger, concurrency over real HTTP, low-stock notices."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from apiflask import APIFlask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from config import Settings
from extensions import db
from models import InventoryAdjustment, InventoryItem, Notification, User
from services.jobs import names
from tests.factories import auth_headers, make_team, team_of_every_role
from tests.support import WebServer, Worker, problem_body, wait_for


def _base(team_id: uuid.UUID) -> str:
    return f"/api/v1/teams/{team_id}/inventory"


@pytest.fixture
def team() -> dict[str, Any]:
    """A team with an owner, an admin, a member and a viewer."""
    return team_of_every_role()


def _create(
    client: FlaskClient, team: dict[str, Any], who: str = "member", **body: Any
) -> dict[str, Any]:
    payload = {"sku": "SKU-1", "name": "Widget", **body}
    response = client.post(
        _base(team["id"]), json=payload, headers=auth_headers(team["users"][who])
    )
    assert response.status_code == 201, response.get_data(as_text=True)
    item: dict[str, Any] = response.get_json()["item"]
    return item


def _adjust(
    client: FlaskClient, team: dict[str, Any], item_id: str, delta: int, who: str = "member"
) -> Any:
    return client.post(
        f"{_base(team['id'])}/{item_id}/adjustments",
        json={"delta": delta, "reason": "test"},
        headers=auth_headers(team["users"][who]),
    )


def _ledger(item_id: Any) -> list[InventoryAdjustment]:
    db.session.rollback()
    return list(
        db.session.scalars(
            select(InventoryAdjustment).where(
                InventoryAdjustment.item_id == uuid.UUID(str(item_id))
            )
        )
    )


def test_create_get_list_patch_and_delete_an_item(
    client: FlaskClient, team: dict[str, Any]
) -> None:
    member, admin = auth_headers(team["users"]["member"]), auth_headers(team["users"]["admin"])
    item = _create(client, team, sku="BOLT-10", name="Bolt", unit_price=250, currency="eur",
                   quantity=7, low_stock_threshold=2)  # fmt: skip
    assert (item["quantity"], item["unit_price"], item["currency"]) == (7, 250, "EUR")
    assert [(a.delta, a.quantity_after) for a in _ledger(item["id"])] == [(7, 7)]
    _create(client, team, sku="NUT-1", name="Nut")

    url = f"{_base(team['id'])}/{item['id']}"
    assert client.get(url, headers=member).get_json()["item"]["sku"] == "BOLT-10"
    listed = client.get(_base(team["id"]) + "?q=olt", headers=member).get_json()
    assert [i["sku"] for i in listed["items"]] == ["BOLT-10"]
    page = client.get(_base(team["id"]) + "?limit=1", headers=member).get_json()
    assert len(page["items"]) == 1 and page["next_cursor"]
    rest = client.get(
        _base(team["id"]) + f"?limit=1&cursor={page['next_cursor']}", headers=member
    ).get_json()
    assert {page["items"][0]["sku"], rest["items"][0]["sku"]} == {"BOLT-10", "NUT-1"}

    patched = client.patch(
        url, json={"name": "Big bolt", "unit_price": 300, "archived": True}, headers=member
    )
    assert patched.status_code == 200, patched.get_data(as_text=True)
    assert patched.get_json()["item"]["name"] == "Big bolt"
    archived = client.get(_base(team["id"]) + "?archived=true", headers=member).get_json()
    assert [i["sku"] for i in archived["items"]] == ["BOLT-10"]
    active = client.get(_base(team["id"]) + "?archived=false", headers=member).get_json()
    assert [i["sku"] for i in active["items"]] == ["NUT-1"]

    problem_body(client.delete(url, headers=member), 403)
    assert client.delete(url, headers=admin).status_code == 204
    problem_body(client.get(url, headers=member), 404)
    assert _ledger(item["id"]) == []


def test_duplicate_sku_in_a_team_is_a_conflict(client: FlaskClient, team: dict[str, Any]) -> None:
    _create(client, team, sku="DUP")
    again = client.post(_base(team["id"]), json={"sku": "DUP", "name": "Again"},
                        headers=auth_headers(team["users"]["member"]))  # fmt: skip
    problem_body(again, 409)
    other = make_team(team["users"]["owner"], name="Other")
    assert client.post(_base(other), json={"sku": "DUP", "name": "Elsewhere"},
                       headers=auth_headers(team["users"]["owner"])).status_code == 201  # fmt: skip


def test_quantity_is_not_patchable_and_bad_currency_is_refused(
    client: FlaskClient, team: dict[str, Any]
) -> None:
    item = _create(client, team, quantity=5)
    url = f"{_base(team['id'])}/{item['id']}"
    headers = auth_headers(team["users"]["member"])
    body = problem_body(client.patch(url, json={"quantity": 99}, headers=headers), 422)
    assert "quantity" in json.dumps(body)
    problem_body(client.patch(url, json={"currency": "XXX"}, headers=headers), 422)
    assert client.get(url, headers=headers).get_json()["item"]["quantity"] == 5


def test_an_adjustment_changes_stock_and_writes_the_ledger(
    client: FlaskClient, team: dict[str, Any]
) -> None:
    item = _create(client, team, quantity=10)
    response = _adjust(client, team, item["id"], -4)
    assert response.status_code == 201, response.get_data(as_text=True)
    body = response.get_json()
    assert body["item"]["quantity"] == 6 and body["item"]["version"] > item["version"]
    assert (body["adjustment"]["delta"], body["adjustment"]["quantity_after"]) == (-4, 6)
    problem_body(_adjust(client, team, item["id"], 0), 422)
    listed = client.get(f"{_base(team['id'])}/{item['id']}/adjustments",
                        headers=auth_headers(team["users"]["viewer"])).get_json()  # fmt: skip
    assert sorted(a["delta"] for a in listed["items"]) == [-4, 10]


def test_an_adjustment_below_zero_is_a_conflict_and_leaves_no_ledger_row(
    client: FlaskClient, team: dict[str, Any]
) -> None:
    item = _create(client, team, quantity=3)
    problem_body(_adjust(client, team, item["id"], -4), 409)
    assert [a.delta for a in _ledger(item["id"])] == [3]
    db.session.rollback()
    stored = db.session.get(InventoryItem, uuid.UUID(item["id"]))
    assert stored is not None and stored.quantity == 3


def test_a_viewer_can_read_but_not_adjust(client: FlaskClient, team: dict[str, Any]) -> None:
    item = _create(client, team, quantity=3)
    viewer = auth_headers(team["users"]["viewer"])
    assert client.get(f"{_base(team['id'])}/{item['id']}", headers=viewer).status_code == 200
    problem_body(_adjust(client, team, item["id"], 1, who="viewer"), 403)
    assert len(_ledger(item["id"])) == 1


def _low_stock_recipients(item_id: str) -> list[uuid.UUID]:
    db.session.rollback()
    return list(
        db.session.scalars(
            select(Notification.user_id).where(
                Notification.event_key.like(f"low_stock:{item_id}:%")
            )
        )
    )


def test_crossing_the_low_stock_threshold_notifies_owners_and_admins_once_per_crossing(
    client: FlaskClient, team: dict[str, Any], worker: Worker
) -> None:
    users: dict[str, User] = team["users"]
    leads = sorted([users["owner"].id, users["admin"].id])
    item = _create(client, team, quantity=10, low_stock_threshold=5)

    assert _adjust(client, team, item["id"], -3).status_code == 201  # 7: still above
    assert _adjust(client, team, item["id"], -2).status_code == 201  # 5: crosses down
    wait_for(lambda: len(_low_stock_recipients(item["id"])) == 2, 30, worker.describe)
    assert sorted(_low_stock_recipients(item["id"])) == leads
    assert _adjust(client, team, item["id"], -1).status_code == 201  # 4: still below
    assert _adjust(client, team, item["id"], 6).status_code == 201  # 10: back above
    assert _adjust(client, team, item["id"], -8).status_code == 201  # 2: crosses again
    wait_for(lambda: len(_low_stock_recipients(item["id"])) == 4, 30, worker.describe)
    # Let any (wrong) extra fan-out land before counting exactly.
    assert _adjust(client, team, item["id"], -1).status_code == 201  # 1: still below
    wait_for(lambda: _fan_outs_finished(team["id"]), 30, worker.describe)
    assert sorted(_low_stock_recipients(item["id"])) == sorted(leads * 2)
    db.session.rollback()
    title = db.session.scalar(
        select(Notification.title).where(Notification.user_id == users["admin"].id).limit(1)
    )
    assert title == "SKU-1 is running low"


def _fan_outs_finished(team_id: uuid.UUID) -> bool:
    from models import Job

    db.session.rollback()
    unfinished = db.session.scalar(
        select(func.count()).select_from(Job).where(
            Job.team_id == team_id, Job.type == names.NOTIFICATIONS_FAN_OUT,
            Job.status.not_in(("succeeded",)),
        )
    )  # fmt: skip
    return unfinished == 0


# --- concurrency over real HTTP ----------------------------------------------------------


@pytest.fixture
def web(settings: Settings, app: APIFlask) -> Iterator[WebServer]:
    server = WebServer("inventory", settings, workers=2, threads=8)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_twenty_concurrent_adjustments_over_http_lose_nothing(
    web: WebServer, team: dict[str, Any]
) -> None:
    headers = dict(auth_headers(team["users"]["member"]))
    status, _, body = web.request("POST", _base(team["id"]), {"sku": "RACE", "name": "Race",
                               "quantity": 40}, headers)  # fmt: skip
    assert status == 201, body
    item_id = body["item"]["id"]
    opening = {a.id for a in _ledger(item_id)}
    url = f"{_base(team['id'])}/{item_id}/adjustments"
    deltas = [5, -3] * 10

    def fire(delta: int) -> int:
        return web.request("POST", url, {"delta": delta, "reason": "race"}, headers)[0]

    with ThreadPoolExecutor(max_workers=20) as pool:
        statuses = list(pool.map(fire, deltas))
    assert statuses == [201] * 20

    status, _, body = web.request("GET", f"{_base(team['id'])}/{item_id}", headers=headers)
    assert status == 200 and body["item"]["quantity"] == 40 + 50 - 30
    ledger = _ledger(item_id)
    applied = [a for a in ledger if a.id not in opening]
    assert len(applied) == 20
    assert sum(a.delta for a in applied) == 60 - 40
    assert sum(a.delta for a in ledger) == 60
    # Serialised: the changes chain from 40 to 60, each starting where another ended.
    befores = Counter(a.quantity_after - a.delta for a in applied) + Counter([60])
    assert befores == Counter(a.quantity_after for a in applied) + Counter([40])
