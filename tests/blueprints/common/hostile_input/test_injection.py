"""SQL and HTML injection stored verbatim or refused, amounts and stock within bounds,
and upload filenames that never leave the team's prefix.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select, text
from werkzeug.test import TestResponse

from extensions import db
from models import User
from models.file import UserFile
from services.messaging import notifications
from services.messaging.mail import build_message
from tests.blueprints.common.hostile_input.hostile import (
    TEXT_FIELDS,
    World,
    every_one_refused,
    nothing_written,
    refused,
    send,
    table_counts,
    with_field,
)

BIG = 2**63  # one past PostgreSQL's BIGINT


# SQL and HTML injection ---------------------------------------------------------------------

INJECTIONS = [
    "'; DROP TABLE users; --",
    "Robert'); DELETE FROM teams WHERE ('1'='1",
    '" OR 1=1 --',
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(document.cookie)>",
    "{{7*7}} ${7*7} %(x)s",
]


def strings_in(value: Any) -> Iterator[str]:
    """Every string anywhere in a parsed JSON document."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings_in(item)


@pytest.mark.parametrize("payload", INJECTIONS)
def test_injection_is_stored_verbatim_or_refused(
    client: FlaskClient, world: World, payload: str
) -> None:
    before = table_counts()
    for route, field in TEXT_FIELDS:
        response = send(client, world, route, body=with_field(route, field, payload))
        if response.status_code == 422:  # e.g. not an email address
            refused(response, 422)
            continue
        assert response.status_code in (200, 201, 202), (route, field, response.data)
        assert response.mimetype == "application/json"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        returned = list(strings_in(response.get_json()))
        if route == "register":  # the answer says nothing about the account: read the row
            db.session.rollback()
            returned = list(db.session.scalars(select(User.name)))
        if field == "filename":  # a display name: directories are cut, the rest is kept
            assert payload.rsplit("/", 1)[-1] in returned, (route, field)
        elif field == "email":
            assert payload.lower() in [s.lower() for s in returned], (route, field)
        else:
            assert payload in returned, (route, field)
    after = table_counts()  # every table still there, none emptied
    assert all(after[t] >= before[t] for t in before)


def test_injection_in_a_notification_stays_text(client: FlaskClient, world: World) -> None:
    """An item's SKU and name reach notifications and their email: shown as text there."""
    sku, name = "<script>alert(1)</script>", "{{7*7}} '; DROP TABLE notifications; --"
    created = send(client, world, "item_create", body={
        "sku": sku, "name": name, "quantity": 10, "low_stock_threshold": 5,
    })  # fmt: skip
    assert created.status_code == 201, created.get_data(as_text=True)
    item_id = created.get_json()["item"]["id"]
    path = f"/api/v1/teams/{world.team_id}/inventory/{item_id}/adjustments"
    response = client.post(path, json={"delta": -6}, headers=world.headers)
    assert response.status_code == 201, response.get_data(as_text=True)
    # The fan-out job's work, done here (no worker needed): write the owner's notification.
    job_args = db.session.execute(
        text("SELECT args FROM jobs WHERE type = 'notifications.fan_out'")
    ).scalar_one()
    notifications.write_chunk(
        [world.user.id], job_args["template"], job_args["data"], event_key=job_args["event_key"],
        team_id=world.team_id,
    )  # fmt: skip
    db.session.commit()

    listed = client.get("/api/v1/notifications", headers=world.headers).get_json()["items"]
    assert listed[0]["title"] == f"{sku} is running low"  # not executed, not re-rendered
    assert name in listed[0]["body"]
    message = build_message(
        "notification", {"notification_id": listed[0]["id"]}, job_id=uuid.uuid4()
    )
    html = message.get_body(preferencelist=("html",)).get_content()  # type: ignore[union-attr]
    assert "<script>" not in html and "&lt;script&gt;" in html


@pytest.mark.parametrize(
    "query",
    ["' OR 1=1 --", "'; DROP TABLE search_documents; --", "a & b | !c:*", "%' AND pg_sleep(5)--",
     "<b>x</b>", ")(*&^%$#@!"],
)  # fmt: skip
def test_search_query_is_words_not_sql(client: FlaskClient, world: World, query: str) -> None:
    with nothing_written():
        response = client.get(
            f"/api/v1/teams/{world.team_id}/search", query_string={"q": query},
            headers=world.headers,
        )  # fmt: skip
        if response.status_code == 422:  # nothing to search for once the symbols are gone
            refused(response, 422)
        else:
            assert response.status_code == 200, response.get_data(as_text=True)
            assert response.get_json()["items"] == []


# Amounts -------------------------------------------------------------------------------------

BAD_AMOUNTS: dict[tuple[str, str], list[Any]] = {
    ("payment", "amount"): [-100, 0, 19.99, 1000.0, BIG, 10**30, "1999", True, None, [1],
                            {"value": 1}, 100_000_000],  # the gateway charges 8 digits at most
    ("refund", "amount"): [-1, 0, 0.5, BIG, "100", False, 100_000_000,
                           1001],  # more than was captured
    ("item_create", "unit_price"): [-1, 2.5, BIG, "250", True, None],
    ("item_create", "quantity"): [-1, 2**64, 1e3, "3", False],
    ("item_create", "low_stock_threshold"): [-5, BIG, 0.1],
    ("item_update", "unit_price"): [-1, BIG, 1.5, "600"],
    ("item_update", "low_stock_threshold"): ["1", -1, BIG],
    ("adjustment", "delta"): [0, BIG, -BIG, 2**64 + 1, 1.5, "1", True, None],
    ("upload", "size"): [0, -1, BIG, 10**30, 1.5, "1024", True, None],
}  # fmt: skip


@pytest.mark.parametrize(("route", "field"), list(BAD_AMOUNTS))
def test_bad_amounts_are_422(client: FlaskClient, world: World, route: str, field: str) -> None:
    def attempt(value: Any) -> TestResponse:
        response = send(client, world, route, body=with_field(route, field, value))
        assert field in (response.get_json(force=True).get("errors") or {}), value
        return response

    every_one_refused(BAD_AMOUNTS[route, field], attempt, 422)


def test_stock_stays_between_zero_and_the_maximum(client: FlaskClient, world: World) -> None:
    """Stock and single changes are bounded together, so no sum of changes overflows."""
    with nothing_written():
        body = refused(send(client, world, "adjustment", body={"delta": -11}), 409)
    assert body["quantity"] == 10
    top = 1_000_000_000_000
    assert send(client, world, "adjustment", body={"delta": top - 10}).status_code == 201
    with nothing_written():
        body = refused(send(client, world, "adjustment", body={"delta": 1}), 409)
    assert body["quantity"] == top


# Filenames -------------------------------------------------------------------------------------

FILENAMES = [
    "../../etc/passwd", "..\\..\\windows\\system32\\config\\sam", "/etc/passwd", "C:\\boot.ini",
    "....//....//etc/passwd", "teams/other-team/uploads/x/original", "%2e%2e%2fetc%2fpasswd",
    "a/../../b.png", "..", ".", "   ", "photo\r\n.png", "\u202egnp.exe", "x" * 1000 + ".png",
    "\\\\server\\share\\a.png", "nul\u0000.png",
]  # fmt: skip


def test_upload_filenames_never_leave_the_team_prefix(client: FlaskClient, world: World) -> None:
    for filename in FILENAMES:
        response = send(client, world, "upload", body=with_field("upload", "filename", filename))
        if response.status_code == 422:
            continue
        assert response.status_code == 201, (filename, response.get_data(as_text=True))
        created = response.get_json()
        file_id, stored = created["file"]["id"], created["file"]["filename"]
        assert stored not in ("", ".", "..") and len(stored) <= 255, filename
        assert not any(c in stored for c in "/\\\x00\r\n\u202e"), filename
        row = db.session.get(UserFile, uuid.UUID(file_id))
        assert row is not None
        assert row.storage_key == f"teams/{world.team_id}/uploads/{file_id}/original"
        assert created["upload"]["fields"].get("key", row.storage_key) == row.storage_key
