"""Hostile request bodies: oversized (declared, lying or chunked), deeply nested, huge
arrays, the wrong content type, and bodies that are not JSON objects.

Every refusal is problem+json with the right status and writes nothing.
"""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from flask.testing import FlaskClient

from blueprints.analytics.views import MAX_BATCH_BYTES
from tests.blueprints.common.hostile_input.hostile import (
    NOW,
    ROUTES,
    VALID,
    World,
    every_one_refused,
    nothing_written,
    refused,
    send,
)

MAX_BODY = 1_048_576  # Settings.max_content_length (analytics batches may be larger)


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
