"""Text the API cannot take: invalid UTF-8, NUL, lone surrogates, numbers JSON lacks, and
bad bytes in URLs and headers.
"""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from tests.blueprints.common.hostile_input.hostile import (
    NOW,
    ROUTES,
    TEXT_FIELDS,
    VALID,
    World,
    every_one_refused,
    nothing_written,
    refused,
    send,
    with_field,
)
from tests.factories import PASSWORD

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
