"""The error contract (API.md "Errors"): every failure is RFC 9457 problem+json.

Also the per-request plumbing a client relies on: X-Request-ID, the ops endpoints and the
published OpenAPI document.
"""

from __future__ import annotations

import io
import json
import logging
import re
import uuid
from collections.abc import Mapping
from typing import Any

import pytest
from apiflask import APIFlask
from flask.testing import FlaskClient
from flask_jwt_extended import create_refresh_token
from werkzeug.test import TestResponse

from extensions import db
from models import Job, User
from scripts.devservices import free_port
from tests.factories import PASSWORD, auth_headers, make_job, make_user
from tests.support import PrivateStacks

PROBLEM_KEYS = {"type", "title", "status", "detail", "request_id"}
GENERATED_ID = re.compile(r"[0-9a-f]{32}")


def problem_body(response: TestResponse, status: int) -> dict[str, Any]:
    """Assert `response` is a problem+json `status` and return its body."""
    text = response.get_data(as_text=True)
    assert response.status_code == status, text
    assert response.mimetype == "application/problem+json"
    body: dict[str, Any] = json.loads(text)
    assert PROBLEM_KEYS <= body.keys(), body
    assert body["status"] == status
    assert body["type"].startswith("https://")
    assert body["title"] and body["detail"]
    assert body["request_id"] == response.headers["X-Request-ID"]
    assert "Traceback" not in text and 'File "' not in text
    return body


@pytest.fixture
def user_headers() -> Mapping[str, str]:
    return auth_headers(make_user())


# 400 ------------------------------------------------------------------------------------


def test_malformed_json_is_400(client: FlaskClient) -> None:
    response = client.post(
        "/api/v1/auth/register", data='{"email": "a@example.com",', content_type="application/json"
    )
    body = problem_body(response, 400)
    assert "JSON" in body["detail"]
    assert db.session.query(User).count() == 0


# 401 ------------------------------------------------------------------------------------


def test_no_token_is_401_with_a_bearer_challenge(client: FlaskClient) -> None:
    response = client.get("/api/v1/jobs")
    body = problem_body(response, 401)
    assert body["detail"] == "Authentication is required."
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_garbage_token_is_401(client: FlaskClient) -> None:
    response = client.get("/api/v1/jobs", headers={"Authorization": "Bearer not.a.jwt"})
    body = problem_body(response, 401)
    assert body["detail"] == "The access token is invalid."


def test_refresh_token_cannot_be_used_as_access_token(client: FlaskClient) -> None:
    user = make_user()
    refresh = create_refresh_token(identity=str(user.id))
    response = client.get("/api/v1/jobs", headers={"Authorization": f"Bearer {refresh}"})
    problem_body(response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


# 403 / 404 / 405 ------------------------------------------------------------------------


def test_non_admin_on_admin_route_is_403(
    client: FlaskClient, user_headers: Mapping[str, str]
) -> None:
    body = problem_body(client.get("/api/v1/admin/jobs", headers=user_headers), 403)
    assert "administrators" in body["detail"]


def test_unknown_path_is_404_problem_not_html(client: FlaskClient) -> None:
    response = client.get("/api/v1/no-such-area")
    problem_body(response, 404)
    assert "<html" not in response.get_data(as_text=True).lower()


def test_another_users_job_is_404_not_403(client: FlaskClient) -> None:
    owner, stranger = make_user(), make_user()
    job = make_job(owner)
    headers = auth_headers(stranger)

    seen = problem_body(client.get(f"/api/v1/jobs/{job.id}", headers=headers), 404)
    missing = problem_body(client.get(f"/api/v1/jobs/{uuid.uuid4()}", headers=headers), 404)
    # Indistinguishable from a job that does not exist: nothing leaks.
    assert seen["detail"] == missing["detail"]
    problem_body(client.post(f"/api/v1/jobs/{job.id}/cancel", headers=headers), 404)
    db.session.expire_all()
    assert db.session.get(Job, job.id).status == "queued"  # type: ignore[union-attr]
    # The owner still sees it.
    assert client.get(f"/api/v1/jobs/{job.id}", headers=auth_headers(owner)).status_code == 200


def test_wrong_method_is_405_with_allow(
    client: FlaskClient, user_headers: Mapping[str, str]
) -> None:
    response = client.delete("/api/v1/jobs", headers=user_headers)
    problem_body(response, 405)
    allowed = {m.strip() for m in response.headers["Allow"].split(",")}
    assert "GET" in allowed and "DELETE" not in allowed


# 413 / 415 ------------------------------------------------------------------------------


def test_body_over_max_content_length_is_413(app: APIFlask, private_stack: PrivateStacks) -> None:
    small = private_stack(max_content_length=1024).app
    payload = {"email": "big@example.com", "password": "p" * 2000, "name": "Big"}
    response = small.test_client().post("/api/v1/auth/register", json=payload)
    problem_body(response, 413)
    assert db.session.query(User).count() == 0


def test_form_encoded_post_is_415(client: FlaskClient) -> None:
    response = client.post(
        "/api/v1/auth/login", data={"email": "a@example.com", "password": PASSWORD}
    )
    body = problem_body(response, 415)
    assert "application/json" in body["detail"]


# 422 ------------------------------------------------------------------------------------


def test_validation_errors_are_keyed_by_field(client: FlaskClient) -> None:
    response = client.post(
        "/api/v1/auth/register",
        json={"email": "not-an-email", "password": "", "name": "Ann", "is_admin": True},
    )
    body = problem_body(response, 422)
    errors = body["errors"]
    assert set(errors) == {"email", "password", "is_admin"}  # the unknown field is rejected
    assert all(
        isinstance(m, list) and m and all(isinstance(x, str) for x in m) for m in errors.values()
    )
    assert db.session.query(User).count() == 0


def test_invalid_cursor_is_422(client: FlaskClient, user_headers: Mapping[str, str]) -> None:
    body = problem_body(client.get("/api/v1/jobs?cursor=garbage", headers=user_headers), 422)
    assert list(body["errors"]) == ["cursor"]


def test_limit_above_maximum_is_422(client: FlaskClient, user_headers: Mapping[str, str]) -> None:
    body = problem_body(client.get("/api/v1/jobs?limit=1000", headers=user_headers), 422)
    assert list(body["errors"]) == ["limit"]
    assert client.get("/api/v1/jobs?limit=200", headers=user_headers).status_code == 200


# 429 ------------------------------------------------------------------------------------


def test_third_login_in_a_minute_is_429_with_rate_limit_headers(
    app: APIFlask, private_stack: PrivateStacks
) -> None:
    limited = private_stack(
        ratelimit_login="2/minute", ratelimit_login_failures="2/minute"
    ).client()
    credentials = {"email": "nobody@example.com", "password": "wrong password"}
    first, second, third = (limited.post("/api/v1/auth/login", json=credentials) for _ in range(3))
    assert (first.status_code, second.status_code) == (401, 401)
    assert "Retry-After" not in first.headers  # only a limited response says when to retry
    assert first.headers["RateLimit-Limit"] == "2"
    assert (first.headers["RateLimit-Remaining"], second.headers["RateLimit-Remaining"]) == (
        "1",
        "0",
    )
    problem_body(third, 429)
    assert 0 < int(third.headers["Retry-After"]) <= 60
    assert third.headers["RateLimit-Limit"] == "2"
    assert third.headers["RateLimit-Remaining"] == "0"
    assert 0 <= int(third.headers["RateLimit-Reset"]) <= 61  # seconds (rounded up), not an epoch


# 500 ------------------------------------------------------------------------------------


class _Capture(logging.Handler):
    """Collects the app's formatted log lines (the operator's view of an error)."""

    def __init__(self, formatter: logging.Formatter | None) -> None:
        super().__init__()
        self.stream = io.StringIO()
        self.setFormatter(formatter)

    def emit(self, record: logging.LogRecord) -> None:
        self.stream.write(self.format(record) + "\n")


def test_unexpected_error_is_500_without_details(
    app: APIFlask, private_stack: PrivateStacks
) -> None:
    fresh = private_stack().app

    @fresh.get("/boom")
    def boom() -> dict[str, str]:
        raise RuntimeError("secret detail")

    root = logging.getLogger()  # create_app reconfigured logging: capture after it
    capture = _Capture(root.handlers[0].formatter)
    root.addHandler(capture)
    try:
        response = fresh.test_client().get("/boom")
    finally:
        root.removeHandler(capture)

    body = problem_body(response, 500)
    text = response.get_data(as_text=True)
    assert "secret detail" not in text and "RuntimeError" not in text
    assert "<html" not in text.lower()
    # The operator, unlike the client, gets the whole story, tied to the request id.
    logged = capture.stream.getvalue()
    assert "unhandled_error" in logged and "secret detail" in logged
    assert body["request_id"] in logged


# 503 ------------------------------------------------------------------------------------


# A list reads through the session; a job's status through the lean read (db.read_one).
@pytest.mark.parametrize("path", ["/api/v1/jobs", f"/api/v1/jobs/{uuid.UUID(int=1)}"])
def test_database_down_is_503_with_retry_after(
    app: APIFlask, private_stack: PrivateStacks, path: str
) -> None:
    headers = auth_headers(make_user())
    # Signed in a moment ago: the process may know the user without reading its row, so
    # the read behind `path` can be the first to need the database.
    assert app.test_client().get("/api/v1/jobs", headers=headers).status_code == 200
    db.session.remove()  # the next request must open a connection to the dead database
    dead_db = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x"
    down = private_stack(database_url=dead_db).app

    response = down.test_client().get(path, headers=headers)
    body = problem_body(response, 503)
    assert response.headers["Retry-After"] == "5"  # ours, not inflated by the rate limiter
    assert body["type"].endswith("/dependency-unavailable")
    assert "database" in body["detail"]
    assert "127.0.0.1" not in response.get_data(as_text=True)  # no connection details leak


def test_a_pool_that_stays_exhausted_is_503_with_retry_after(
    app: APIFlask, private_stack: PrivateStacks
) -> None:
    headers = auth_headers(make_user())
    db.session.remove()
    busy = private_stack(keep="all", db_pool_size=1, db_pool_timeout_seconds=0.1).app
    held = db.engine.connect()  # the pool's only connection, in use for the whole request
    try:
        response = busy.test_client().get("/api/v1/jobs", headers=headers)
    finally:
        held.close()
    body = problem_body(response, 503)
    assert response.headers["Retry-After"] == "5"
    assert body["type"].endswith("/dependency-unavailable") and "busy" in body["detail"]


def test_readyz_names_the_failing_dependency(app: APIFlask, private_stack: PrivateStacks) -> None:
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    # The broker is that Redis (also on a RabbitMQ test run, which configures one).
    response = private_stack(redis_url=dead_redis, celery_broker_url="").client().get("/readyz")
    body = problem_body(response, 503)
    assert int(response.headers["Retry-After"]) > 0
    assert "redis" in body["detail"]
    checks = body["checks"]
    assert checks["postgresql"] == "ok"
    assert checks["redis"] != "ok" and checks["broker"] != "ok"  # the broker is that Redis too


def test_readyz_ok_when_everything_is_up(client: FlaskClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.get_json() == {
        "status": "ok",
        "checks": {"postgresql": "ok", "redis": "ok", "broker": "ok"},
    }


# X-Request-ID -----------------------------------------------------------------------------


def test_request_id_is_generated_on_every_response(client: FlaskClient) -> None:
    ok, error = client.get("/healthz"), client.get("/api/v1/nope")
    ids = [ok.headers["X-Request-ID"], error.headers["X-Request-ID"]]
    assert all(GENERATED_ID.fullmatch(i) for i in ids)
    assert ids[0] != ids[1]
    assert error.get_json(force=True)["request_id"] == ids[1]


@pytest.mark.parametrize(
    "sent", ["abc-123", "trace.7f3a:span_01", "x" * 64], ids=["short", "punctuated", "64-chars"]
)
def test_sane_request_id_is_echoed(client: FlaskClient, sent: str) -> None:
    assert client.get("/healthz", headers={"X-Request-ID": sent}).headers["X-Request-ID"] == sent
    error = client.get("/api/v1/jobs", headers={"X-Request-ID": sent})
    assert error.headers["X-Request-ID"] == sent
    assert problem_body(error, 401)["request_id"] == sent


def test_echoed_request_id_fits_the_ledgers(client: FlaskClient) -> None:
    # Ids are stored with audit rows (VARCHAR(64)): a longer one must not break a sign-up.
    sent = "r" * 100
    response = client.post(
        "/api/v1/auth/register",
        json={"email": "long-id@example.com", "password": PASSWORD, "name": "Long"},
        headers={"X-Request-ID": sent},
    )
    assert response.status_code == 202, response.get_data(as_text=True)
    assert GENERATED_ID.fullmatch(response.headers["X-Request-ID"])


@pytest.mark.parametrize(
    "sent",
    ["a" * 300, "has spaces in it", "<script>alert(1)</script>", "abc\n", "abc\r\nSet-Cookie: x=1"],
    ids=["300-chars", "spaces", "markup", "trailing-newline", "header-injection"],
)
def test_hostile_request_id_is_replaced(client: FlaskClient, sent: str) -> None:
    # Set through the environ: the test client itself refuses newlines in headers.
    response = client.get("/healthz", environ_overrides={"HTTP_X_REQUEST_ID": sent})
    assert response.status_code == 200
    assert GENERATED_ID.fullmatch(response.headers["X-Request-ID"])
    assert "Set-Cookie" not in response.headers


# ops and docs -----------------------------------------------------------------------------


def test_healthz(client: FlaskClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_api_index_lists_areas_and_working_links(client: FlaskClient) -> None:
    response = client.get("/api")
    assert response.status_code == 200
    index = response.get_json()
    assert {"auth", "jobs", "admin_jobs"} <= index["areas"].keys()
    assert index["areas"]["jobs"] == "/api/v1/jobs"
    links = index["links"]
    assert {"openapi", "docs", "health", "ready"} <= links.keys()
    for name in ("openapi", "docs", "health"):
        assert client.get(links[name]).status_code == 200, name


def test_openapi_document_lists_the_api(client: FlaskClient) -> None:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    spec = json.loads(response.get_data(as_text=True))
    assert spec["openapi"].startswith("3.")
    assert {"/api/v1/jobs", "/api/v1/auth/login", "/api/v1/auth/register"} <= spec["paths"].keys()
    assert "post" in spec["paths"]["/api/v1/auth/login"]


def test_docs_serve_html(client: FlaskClient) -> None:
    response = client.get("/docs")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    assert "<html" in response.get_data(as_text=True).lower()
