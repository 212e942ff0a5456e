"""Hostile input (issue 10, "Proof under fire"): every attack is a clean problem+json 4xx
and changes nothing.

The attacks are tables, one case a line, thrown at the main mutating route of every area.
`nothing_written()` compares the row count of every table before and after, so a refused
request provably wrote nothing anywhere: no row of its own, no audit row, no job, not even
an idempotency key. Where an attack is harmless text (SQL or markup), the contract is the
other way round: stored verbatim, returned as JSON, never executed.
"""

from __future__ import annotations

import io
import json
import socket
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select, text
from werkzeug.test import TestResponse

from blueprints.analytics.views import MAX_BATCH_BYTES
from extensions import db
from models import Base, Payment, User
from models.file import UserFile
from services.inventory import items as inventory
from services.messaging import notifications
from services.messaging.mail import build_message
from tests.factories import PASSWORD, auth_headers, give_plan, make_team, make_user
from tests.support import problem_body

MAX_BODY = 1_048_576  # Settings.max_content_length (analytics batches may be larger)
NOW = datetime.now(UTC).isoformat()  # events must be recent
BIG = 2**63  # one past PostgreSQL's BIGINT


@dataclass(frozen=True)
class World:
    """A team with one of everything the routes below act on, and its owner's headers."""

    user: User
    team_id: uuid.UUID
    item_id: uuid.UUID
    payment_id: uuid.UUID
    headers: Mapping[str, str]


@pytest.fixture
def world(client: FlaskClient) -> World:
    owner = make_user()
    team_id = make_team(owner)
    give_plan(team_id)
    item = inventory.create_item(
        owner, team_id, sku="SKU-1", name="Widget", description=None, quantity=10,
        unit_price=500, currency="USD", low_stock_threshold=5,
    )  # fmt: skip
    payment = Payment(
        id=uuid.uuid4(), team_id=team_id, created_by_id=owner.id, amount=1000, currency="USD",
        status="succeeded", payment_method="pm_card_visa", idempotency_key="seed",
    )  # fmt: skip
    db.session.add(payment)
    db.session.commit()
    return World(owner, team_id, item.id, payment.id, auth_headers(owner))


# The main mutating route of each area, and a body it accepts.
ROUTES: dict[str, tuple[str, str]] = {
    "register": ("POST", "/api/v1/auth/register"),
    "api_key": ("POST", "/api/v1/auth/api-keys"),
    "team_create": ("POST", "/api/v1/teams"),
    "team_update": ("PATCH", "/api/v1/teams/{team}"),
    "invite": ("POST", "/api/v1/teams/{team}/invites"),
    "item_create": ("POST", "/api/v1/teams/{team}/inventory"),
    "item_update": ("PATCH", "/api/v1/teams/{team}/inventory/{item}"),
    "adjustment": ("POST", "/api/v1/teams/{team}/inventory/{item}/adjustments"),
    "payment": ("POST", "/api/v1/teams/{team}/payments"),
    "refund": ("POST", "/api/v1/teams/{team}/payments/{payment}/refunds"),
    "subscribe": ("POST", "/api/v1/teams/{team}/subscription"),
    "upload": ("POST", "/api/v1/teams/{team}/uploads"),
    "export": ("POST", "/api/v1/teams/{team}/exports"),
    "events": ("POST", "/api/v1/teams/{team}/analytics/events"),
    "preferences": ("PUT", "/api/v1/notifications/preferences"),
    "settings": ("PATCH", "/api/v1/me/settings"),
    "profile": ("PATCH", "/api/v1/me"),
}
VALID: dict[str, dict[str, Any]] = {
    "register": {"email": "new@example.com", "password": PASSWORD, "name": "New"},
    "api_key": {"name": "ci", "scopes": ["read"], "current_password": PASSWORD},
    "team_create": {"name": "Beta"},
    "team_update": {"name": "Renamed"},
    "invite": {"email": "friend@example.com", "role": "member"},
    "item_create": {"sku": "SKU-2", "name": "Gadget", "description": "Blue", "quantity": 3,
                    "unit_price": 250, "currency": "USD"},
    "item_update": {"name": "Widget 2", "description": "Red", "unit_price": 600},
    "adjustment": {"delta": -1, "reason": "sold"},
    "payment": {"amount": 1999, "currency": "USD", "description": "Order 1",
                "payment_method": "pm_card_visa"},
    "refund": {"amount": 100, "reason": "damaged"},
    "subscribe": {"plan": "pro", "payment_method": "pm_card_visa"},
    "upload": {"filename": "photo.png", "content_type": "image/png", "size": 1024},
    "export": {"resource": "inventory", "format": "csv"},
    "events": {"events": [{"name": "signup", "occurred_at": NOW}]},
    "preferences": {"preferences": {"inventory": {"email": False}}},
    "settings": {"settings": {"theme": "dark"}},
    "profile": {"name": "Renamed User"},
}  # fmt: skip
# (route, field) for every free-text field of the main create and update bodies.
TEXT_FIELDS = [
    ("register", "name"), ("register", "email"), ("api_key", "name"),
    ("team_create", "name"), ("team_update", "name"), ("invite", "email"),
    ("item_create", "sku"), ("item_create", "name"), ("item_create", "description"),
    ("item_update", "name"), ("item_update", "description"), ("adjustment", "reason"),
    ("payment", "description"), ("refund", "reason"), ("upload", "filename"),
    ("profile", "name"),
]  # fmt: skip


def send(
    client: FlaskClient,
    world: World,
    route: str,
    *,
    body: Any = None,
    raw: bytes | str | None = None,
    content_type: str | None = "application/json",
    headers: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> TestResponse:
    """One request to `route` as the team's owner (a fresh Idempotency-Key on a POST)."""
    method, template = ROUTES[route]
    path = template.format(team=world.team_id, item=world.item_id, payment=world.payment_id)
    all_headers = {**world.headers, **(headers or {})}
    if method == "POST":
        all_headers.setdefault("Idempotency-Key", str(uuid.uuid4()))
    data = raw if raw is not None else (json.dumps(body) if body is not None else None)
    return client.open(
        path, method=method, data=data, content_type=content_type, headers=all_headers, **kwargs
    )


def with_field(route: str, field: str, value: Any) -> dict[str, Any]:
    """The route's valid body with one field replaced (and a fresh SKU for a new item)."""
    body = {**VALID[route], field: value}
    if route == "item_create" and field != "sku":
        body["sku"] = f"SKU-{uuid.uuid4().hex[:8]}"
    return body


def table_counts() -> dict[str, int]:
    """The number of rows in every table, as committed right now."""
    db.session.rollback()
    tables = [t.name for t in Base.metadata.sorted_tables]
    sql = "SELECT " + ", ".join(f"(SELECT count(*) FROM {t}) AS {t}" for t in tables)
    return dict(db.session.execute(text(sql)).mappings().one())


@contextmanager
def nothing_written() -> Iterator[None]:
    before = table_counts()
    yield
    after = table_counts()
    assert after == before, {t: (before[t], after[t]) for t in before if before[t] != after[t]}


def refused(response: TestResponse, *statuses: int) -> dict[str, Any]:
    """A problem+json answer with one of `statuses`, small and without internals."""
    assert response.status_code in statuses, response.get_data(as_text=True)[:2000]
    body = problem_body(response, response.status_code)
    assert "Traceback" not in response.get_data(as_text=True)
    # No amplification: the answer to a huge request is not huge itself.
    assert len(response.get_data()) < 64 * 1024
    return body


def every_one_refused(
    cases: Iterable[Any], attempt: Callable[[Any], TestResponse], *statuses: int
) -> None:
    """Each case refused with one of `statuses` as problem+json, and nothing written by any:
    all are tried, so a failure lists every case that got through."""
    wrong: dict[str, str] = {}
    with nothing_written():
        for case in cases:
            response = attempt(case)
            try:
                refused(response, *statuses)
            except AssertionError:
                wrong[repr(case)[:80]] = response.get_data(as_text=True)[:300]
    assert wrong == {}


def test_the_valid_bodies_are_accepted(client: FlaskClient, world: World) -> None:
    """The bodies the attacks start from work, so each refusal below is the attack's doing."""
    for route in ROUTES:
        if route == "subscribe":
            continue  # needs the gateway; its attacks are all refused before it
        response = send(client, world, route, body=VALID[route])
        assert response.status_code < 300, (route, response.get_data(as_text=True))


# Oversized bodies -------------------------------------------------------------------------


def test_body_over_the_limit_is_413(client: FlaskClient, world: World) -> None:
    padding = "x" * (MAX_BATCH_BYTES + 1)  # over even the analytics batch limit
    every_one_refused(
        ROUTES, lambda r: send(client, world, r, body={**VALID[r], "padding": padding}), 413
    )


@pytest.mark.parametrize(
    ("route", "content_length", "status"),
    [
        ("team_create", str(10**12), 413),  # a huge promise: refused before reading
        ("payment", str(MAX_BODY + 1), 413),
        ("events", "5000", 400),  # a short body behind a larger length: cut off
        ("item_create", "-5", 400),
        ("refund", "not-a-number", 400),
    ],
)
def test_content_length_that_lies_is_refused(
    client: FlaskClient, world: World, route: str, content_length: str, status: int
) -> None:
    with nothing_written():
        response = send(
            client, world, route, raw=json.dumps(VALID[route]),
            environ_overrides={"CONTENT_LENGTH": content_length},
        )  # fmt: skip
        refused(response, status)


@pytest.mark.parametrize(
    ("route", "size"), [("team_create", MAX_BODY), ("events", MAX_BATCH_BYTES)]
)
def test_chunked_body_over_the_limit_is_413(
    client: FlaskClient, world: World, route: str, size: int
) -> None:
    # No Content-Length: a server that de-chunks (gunicorn) says the stream ends by itself,
    # and the limit is enforced while reading.
    body = json.dumps({**VALID[route], "padding": "x" * size}).encode()
    with nothing_written():
        response = send(
            client, world, route, input_stream=io.BytesIO(body),
            headers={"Transfer-Encoding": "chunked"},
            environ_overrides={"wsgi.input_terminated": True, "CONTENT_LENGTH": ""},
        )  # fmt: skip
        refused(response, 413)


def test_chunked_body_within_the_limit_is_read(client: FlaskClient, world: World) -> None:
    body = json.dumps({"name": "Chunked " + "x" * 150}).encode()
    response = send(
        client, world, "team_create", input_stream=io.BytesIO(body),
        headers={"Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True, "CONTENT_LENGTH": ""},
    )  # fmt: skip
    assert response.status_code == 201, response.get_data(as_text=True)


# Deeply nested JSON and huge arrays ----------------------------------------------------------

DEEP_LIST = "[" * 100_000 + "]" * 100_000
DEEP_OBJECT = '{"a":' * 50_000 + "1" + "}" * 50_000


@pytest.mark.parametrize("raw", [DEEP_LIST, DEEP_OBJECT], ids=["100k-lists", "50k-objects"])
def test_deep_nesting_is_400_not_a_crash(client: FlaskClient, world: World, raw: str) -> None:
    every_one_refused(ROUTES, lambda r: send(client, world, r, raw=raw), 400)
    assert "nested" in send(client, world, "team_create", raw=raw).get_json()["detail"]


@pytest.mark.parametrize(
    ("route", "raw"),
    [
        ("team_create", '{"name": ' + DEEP_LIST + "}"),
        # Shallow enough for Python's json to parse, deep enough that encoders and
        # validators recursing through it again crashed (RecursionError, a 500).
        ("settings", '{"settings": {"x": ' + "[" * 900 + "]" * 900 + "}}"),
        ("events", '{"events": [{"name": "a", "occurred_at": "' + NOW + '", "properties": '
                   + '{"a":' * 600 + "1" + "}" * 600 + "}]}"),
        ("export", '{"resource": "inventory", "filters": ' + '{"a":' * 900 + "1" + "}" * 900 + "}"),
        ("settings", '{"settings": {"x": ' + "[" * 250 + "]" * 250 + "}}"),
    ],
    ids=["in-a-field", "settings-900", "properties-600", "filters-900", "settings-250"],
)  # fmt: skip
def test_deep_nesting_anywhere_is_400(
    client: FlaskClient, world: World, route: str, raw: str
) -> None:
    with nothing_written():
        refused(send(client, world, route, raw=raw), 400)


def test_nesting_within_the_limit_is_fine(client: FlaskClient, world: World) -> None:
    raw = '{"settings": {"x": ' + "[" * 100 + "]" * 100 + "}}"
    assert send(client, world, "settings", raw=raw).status_code == 200


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("events", {"events": [{"name": "click", "occurred_at": NOW}] * 1001}),
        ("events", {"events": [{}] * 100_000}),
        ("events", {"events": [1] * 100_000}),
        ("api_key", {"name": "ci", "scopes": ["read"] * 100_000}),
        ("preferences", {"preferences": {f"c{i}": {"email": False} for i in range(30_000)}}),
        ("settings", {"settings": {f"k{i}": i for i in range(50_000)}}),
        ("export", {"resource": "inventory", "filters": {"status": ["succeeded"] * 50_000}}),
    ],
    ids=["1001-events", "100k-empty-events", "100k-numbers", "100k-scopes",
         "30k-categories", "50k-settings", "50k-filter"],
)  # fmt: skip
def test_huge_arrays_are_422(
    client: FlaskClient, world: World, route: str, body: dict[str, Any]
) -> None:
    with nothing_written():
        refused(send(client, world, route, body=body), 422)


# Invalid UTF-8 and text PostgreSQL cannot store -------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [b'{"name": "\xff\xfe"}', b'{"name": "\xc0\xaf"}', b'{"\xed\xa0\x80": 1}',
     '{"name": "utf-16"}'.encode("utf-16"), '{"name": "utf-32"}'.encode("utf-32-le")],
    ids=["invalid-bytes", "overlong-slash", "encoded-surrogate", "utf-16", "utf-32"],
)  # fmt: skip
def test_body_that_is_not_utf8_is_400(client: FlaskClient, world: World, raw: bytes) -> None:
    every_one_refused(ROUTES, lambda r: send(client, world, r, raw=raw), 400)


def test_nul_in_any_text_field_is_422(client: FlaskClient, world: World) -> None:
    # json.dumps escapes it as \u0000: valid JSON, but text PostgreSQL cannot store.
    def attempt(case: tuple[str, str]) -> TestResponse:
        route, field = case
        response = send(client, world, route, body=with_field(route, field, "nul\u0000byte"))
        assert field in (response.get_json(force=True).get("errors") or {}), case
        return response

    every_one_refused(TEXT_FIELDS, attempt, 422)


@pytest.mark.parametrize("value", ["lone \ud800 surrogate", "\udfff"], ids=["high", "low"])
def test_lone_surrogates_are_400(client: FlaskClient, world: World, value: str) -> None:
    # Escaped halves of a surrogate pair are not Unicode text (I-JSON, RFC 7493).
    def attempt(case: tuple[str, str]) -> TestResponse:
        route, field = case
        return send(client, world, route, body=with_field(route, field, value))

    every_one_refused(TEXT_FIELDS, attempt, 400)


@pytest.mark.parametrize(
    ("route", "raw", "field"),
    [
        ("settings", '{"settings": {"note": "a\\u0000b"}}', "settings.note"),
        ("settings", '{"settings": {"bad\\u0000key": 1}}', "settings.bad\u0000key"),
        ("settings", '{"settings": {"x": ["ok", "\\u0000"]}}', "settings.x.1"),
        ("settings", '{"settings": {"x": 1e400}}', "settings.x"),  # inf for a double
        ("settings", '{"settings": {"x": [-2E+999]}}', "settings.x.0"),
        ("events", '{"events": [{"name": "a", "occurred_at": "' + NOW + '", '
                   '"properties": {"k": "\\u0000"}}]}', "events.0.properties.k"),
        ("preferences", '{"preferences": {"inv\\u0000": {"email": false}}}',
         "preferences.inv\u0000"),
    ],
    ids=["settings-value", "settings-key", "settings-list", "settings-inf", "settings-minus-inf",
         "event-property", "category"],
)  # fmt: skip
def test_unstorable_values_inside_free_form_json_are_422(
    client: FlaskClient, world: World, route: str, raw: str, field: str
) -> None:
    with nothing_written():
        problem = refused(send(client, world, route, raw=raw), 422)
    assert field in problem["errors"]


@pytest.mark.parametrize(
    ("route", "raw"),
    [
        ("settings", '{"settings": {"x": NaN}}'),
        ("settings", '{"settings": {"x": Infinity}}'),
        ("events", '{"events": [{"name": "a", "occurred_at": "' + NOW + '", '
                   '"properties": {"x": -Infinity}}]}'),
        ("payment", '{"amount": NaN, "currency": "USD", "payment_method": "pm_card_visa"}'),
        ("payment", '{"amount": ' + "9" * 5000 + ', "currency": "USD", '
                    '"payment_method": "pm_card_visa"}'),
    ],
    ids=["nan", "infinity", "minus-infinity", "nan-amount", "5000-digit-amount"],
)  # fmt: skip
def test_numbers_json_does_not_have_are_400(
    client: FlaskClient, world: World, route: str, raw: str
) -> None:
    with nothing_written():
        refused(send(client, world, route, raw=raw), 400)


@pytest.mark.parametrize(
    ("method", "path", "statuses"),
    [
        ("GET", "/api/v1/teams/{team}/search?q=%FF%FE", (200, 422)),  # U+FFFD: no word in it
        ("GET", "/api/v1/teams/{team}/search?q=%00", (422,)),
        ("GET", "/api/v1/teams/{team}/audit-logs?action=%00", (422,)),
        ("GET", "/api/v1/teams/{team}/audit-logs?action=%ED%A0%80", (200,)),  # read as U+FFFD
        ("GET", "/api/v1/teams/{team}/inventory?cursor=%FF%00", (422,)),
        ("GET", "/api/v1/teams/{team}/analytics/metrics?name=%00&from=2030-01-01T00:00:00Z"
                "&to=2030-01-02T00:00:00Z", (422,)),
        ("GET", "/api/v1/jobs?type=%00", (422,)),
        ("GET", "/api/v1/teams/%FF%FE", (404,)),
        ("POST", "/api/v1/invites/abc%00def/accept", (400, 404, 422)),
        ("POST", "/api/v1/notifications/unsubscribe?token=%00", (422,)),
    ],
)  # fmt: skip
def test_invalid_utf8_and_nul_in_urls(
    client: FlaskClient, world: World, method: str, path: str, statuses: tuple[int, ...]
) -> None:
    with nothing_written():
        response = client.open(path.format(team=world.team_id), method=method,
                               headers=world.headers)  # fmt: skip
        if response.status_code == 200 and 200 in statuses:
            return
        refused(response, *statuses)


@pytest.mark.parametrize(
    ("route", "header", "value"),
    [
        ("team_create", "Idempotency-Key", "key\x00"),
        ("payment", "Idempotency-Key", "\x00"),
        ("team_create", "User-Agent", "agent\x00"),
        ("team_create", "X-API-Key", "mk_\x00\xff"),
        ("team_create", "X-Forwarded-For", "\x00"),
        ("register", "Accept-Language", "en\x00"),
    ],
)
def test_nul_in_headers_is_400(
    client: FlaskClient, world: World, route: str, header: str, value: str
) -> None:
    # Set through the environ: the test client itself refuses control characters (and so
    # does gunicorn; this holds behind any other server too).
    environ_key = "HTTP_" + header.upper().replace("-", "_")
    with nothing_written():
        response = send(client, world, route, body=VALID[route],
                        environ_overrides={environ_key: value})  # fmt: skip
        refused(response, 400)


def test_latin1_bytes_in_headers_are_plain_text(client: FlaskClient, world: World) -> None:
    # WSGI hands headers over as latin-1: bytes that are not UTF-8 become text, not a crash.
    response = client.post(
        "/api/v1/auth/login", json={"email": world.user.email, "password": PASSWORD},
        environ_overrides={"HTTP_USER_AGENT": "Agent/\xff\xfe", "HTTP_IDEMPOTENCY_KEY": "k\xe9y"},
    )  # fmt: skip
    assert response.status_code == 200, response.get_data(as_text=True)
    with nothing_written():
        for name in ("HTTP_AUTHORIZATION", "HTTP_X_API_KEY"):
            response = client.get("/api/v1/me", environ_overrides={name: "Bearer \xff\xfe"})
            refused(response, 401)


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


# URLs: none are accepted, and none that arrive as text are fetched ------------------------------


def _request_bodies(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            content = operation.get("requestBody", {}).get("content", {})
            for media in content.values():
                yield path, method, media.get("schema", {})


def _properties(schema: dict[str, Any], spec: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """Every (name, schema) of a body, following $refs into the components."""
    seen: set[str] = set()
    stack: list[Any] = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        ref = node.get("$ref")
        if isinstance(ref, str) and ref not in seen:
            seen.add(ref)
            stack.append(spec["components"]["schemas"][ref.rsplit("/", 1)[-1]])
        properties = node.get("properties") or {}
        yield from properties.items()
        stack.extend(v for k, v in node.items() if k != "properties")
        stack.extend(properties.values())


def test_no_request_body_takes_a_url(client: FlaskClient) -> None:
    """The server fetches no client-given URL (no SSRF surface). A new URL field must come
    with an allow-list and a case here proving 169.254.169.254, localhost, file:// and
    gopher:// are refused."""
    spec = client.get("/openapi.json").get_json()
    words = ("url", "uri", "link", "webhook", "callback", "redirect", "endpoint", "host")
    suspicious = {
        (path, method, name)
        for path, method, schema in _request_bodies(spec)
        for name, prop in _properties(schema, spec)
        if any(w in name.lower() for w in words)
        or (isinstance(prop, dict) and prop.get("format") in ("uri", "url"))
    }
    assert suspicious == set()


SSRF_URLS = [
    "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "http://localhost:6379/",
    "file:///etc/passwd",
    "gopher://127.0.0.1:6379/_FLUSHALL",
]


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A local TCP port that tells whether anything connected to it."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    yield server
    server.close()


def test_urls_in_text_fields_are_stored_not_fetched(
    client: FlaskClient, world: World, listener: socket.socket
) -> None:
    port = listener.getsockname()[1]
    urls = [*SSRF_URLS, f"http://127.0.0.1:{port}/x", f"gopher://127.0.0.1:{port}/_x"]
    # First, while nothing else is in flight: the payments accepted below start jobs
    # whose rows the worker writes later, which `every_one_refused` would count.
    # The one id that goes into the gateway's URLs is a plain token, never a URL or path.
    every_one_refused(
        [*urls, "../../v1/customers", "pm_card_visa/../../x", "pm?expand=x"],
        lambda method: send(client, world, "subscribe",
                            body={"plan": "pro", "payment_method": method}),
        422,
    )  # fmt: skip
    for url in urls:
        bodies = {
            "settings": {"settings": {"avatar_url": url, "webhook": url}},
            "payment": {**VALID["payment"], "description": url},
            "item_create": with_field("item_create", "description", url),
            "events": {"events": [{"name": "visit", "occurred_at": NOW,
                                   "properties": {"callback_url": url}}]},
            "team_update": {"name": url},
        }  # fmt: skip
        for route, body in bodies.items():
            response = send(client, world, route, body=body)
            assert response.status_code < 300, (route, url, response.get_data(as_text=True))
    with pytest.raises(BlockingIOError):
        listener.accept()  # nobody came


# Content types and bodies that are not objects ---------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "multipart/form-data; boundary=x", "application/x-www-form-urlencoded",
     "application/xml", "application/jsonp", None],
)  # fmt: skip
def test_wrong_content_type_is_415(
    client: FlaskClient, world: World, content_type: str | None
) -> None:
    every_one_refused(
        ROUTES,
        lambda r: send(client, world, r, raw=json.dumps(VALID[r]), content_type=content_type),
        415,
    )


@pytest.mark.parametrize(
    ("raw", "status"),
    [("", 400), ("   ", 400), ("[]", 422), ("[{}]", 422), ('"a string"', 422), ("null", 422),
     ("42", 422), ("true", 422), ("{", 400), ("{}{}", 400), ("{'a': 1}", 400)],
    ids=["empty", "blank", "list", "list-of-object", "string", "null", "number", "bool",
         "truncated", "two-objects", "single-quotes"],
)  # fmt: skip
def test_body_that_is_not_a_json_object(
    client: FlaskClient, world: World, raw: str, status: int
) -> None:
    every_one_refused(ROUTES, lambda r: send(client, world, r, raw=raw), status)
