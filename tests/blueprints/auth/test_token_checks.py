"""An attacker's requests against the per-request token checks: the revocation check rides
on the rate limiter's hit (one Redis round trip), so these send the very next request after
a revocation, with the limiter on, off, and with Redis failing."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient

from blueprints.common import default_limit
from extensions import db, redis
from services.identity import sessions
from tests.factories import PASSWORD, auth_headers, make_user
from tests.support import bearer, problem_body


def _login(client: FlaskClient, email: str) -> dict[str, Any]:
    response = client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert response.status_code == 200, response.get_json()
    body: dict[str, Any] = response.get_json()
    return body


def _remaining(client: FlaskClient, headers: Any, address: str) -> int:
    response = client.get("/api/v1/jobs", headers=headers, environ_base={"REMOTE_ADDR": address})
    return int(response.headers["RateLimit-Remaining"])


def test_a_logged_out_token_is_refused_on_the_next_request_and_spends_the_address_budget(
    client: FlaskClient,
) -> None:
    user = make_user()
    stolen = bearer(_login(client, user.email)["access_token"])
    own = dict(auth_headers(user))  # the owner's other token, no session: not revoked
    assert client.get("/api/v1/jobs", headers=stolen).status_code == 200
    assert client.post("/api/v1/auth/logout", headers=stolen).status_code == 204

    before = _remaining(client, own, "10.1.1.1")
    for _ in range(2):
        body = problem_body(
            client.get("/api/v1/jobs", headers=stolen, environ_base={"REMOTE_ADDR": "10.6.6.6"}),
            401,
        )
        assert body["detail"] == "The access token was revoked."
    # The revoked token's hits went to its address, not to the owner's budget.
    assert _remaining(client, own, "10.1.1.1") == before - 1


def test_a_password_reset_cutoff_refuses_every_older_token_on_the_next_request(
    client: FlaskClient,
) -> None:
    user = make_user()
    session_token = bearer(_login(client, user.email)["access_token"])
    sessionless = dict(auth_headers(user))
    for headers in (session_token, sessionless):
        assert client.get("/api/v1/jobs", headers=headers).status_code == 200

    sessions.revoke_user_tokens(user.id)  # what the reset does besides ending the sessions

    for headers in (session_token, sessionless):
        body = problem_body(client.get("/api/v1/jobs", headers=headers), 401)
        assert body["detail"] == "The access token was revoked."
    fresh = bearer(_login(client, user.email)["access_token"])  # signed in after the reset
    assert client.get("/api/v1/jobs", headers=fresh).status_code == 200


def test_revocation_is_checked_without_the_limiter_too(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = make_user()
    token = _login(client, user.email)["access_token"]
    monkeypatch.setattr(client.application.extensions[default_limit.EXTENSION], "enabled", False)
    response = client.get("/api/v1/jobs", headers=bearer(token))
    assert "RateLimit-Limit" not in response.headers  # no limit counted it
    assert client.get("/api/v1/jobs", headers=bearer(token)).status_code == 200
    assert client.post("/api/v1/auth/logout", headers=bearer(token)).status_code == 204
    problem_body(client.get("/api/v1/jobs", headers=bearer(token)), 401)


def test_a_deleted_account_is_refused_at_once(client: FlaskClient) -> None:
    user = make_user()
    headers = bearer(_login(client, user.email)["access_token"])
    other = dict(auth_headers(user))
    assert client.get("/api/v1/jobs", headers=headers).status_code == 200
    response = client.delete("/api/v1/me", headers=headers)
    assert response.status_code == 202, response.get_data(as_text=True)
    db.session.expire_all()
    for token in (headers, other):  # with a session (revoked) and without one
        problem_body(client.get("/api/v1/jobs", headers=token), 401)


def test_redis_failing_under_the_limiter_still_fails_closed(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = make_user()
    headers = dict(auth_headers(user))
    limit = client.application.extensions[default_limit.EXTENSION]
    monkeypatch.setattr(limit, "_redis_down_until", 0.0)  # restored: later tests use Redis
    monkeypatch.setattr(default_limit, "REDIS_RETRY_SECONDS", 3600.0)

    tried: list[str] = []

    def failing(name: str) -> Any:
        def down(*_args: Any, **_kwargs: Any) -> Any:
            tried.append(name)
            raise ConnectionError("redis is down")

        return down

    # The default limit falls back to this process's memory; the token's revocation then
    # cannot be known, and the request must not go through.
    with monkeypatch.context() as outage:
        outage.setattr(redis.client, "evalsha", failing("limiter"))
        outage.setattr(redis.client, "mget", failing("guard"))
        problem_body(client.get("/api/v1/jobs", headers=headers), 503)
    assert tried == ["limiter", "guard"]  # the hit, then the guard alone

    # Redis is back: until the limiter tries it again it counts in memory (the refused
    # request was counted too), and the guard checks the token on its own.
    served = client.get("/api/v1/jobs", headers=headers)
    assert served.status_code == 200, served.get_data(as_text=True)
    assert int(served.headers["RateLimit-Remaining"]) == int(served.headers["RateLimit-Limit"]) - 2
    assert tried == ["limiter", "guard"]
