"""The default limit counts per verified user, verifying each credential once per request."""

from __future__ import annotations

from typing import Any

import jwt
import pytest
from flask.testing import FlaskClient

from blueprints.common.ratelimits import limiter
from extensions import redis
from services.identity.sessions import is_token_revoked
from tests.factories import auth_headers, make_user
from tests.support import problem_body
from tests.support.stack import PrivateStacks


def _remaining(client: FlaskClient, headers: dict[str, str], address: str) -> int:
    response = client.get("/api/v1/jobs", headers=headers, environ_base={"REMOTE_ADDR": address})
    assert response.status_code == 200, response.get_data(as_text=True)
    return int(response.headers["RateLimit-Remaining"])


def test_the_default_limit_counts_per_user_and_verifies_each_token_once(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice, bob = dict(auth_headers(make_user())), dict(auth_headers(make_user()))
    checked: list[str] = []

    def counting_check(payload: dict[str, Any]) -> bool:
        checked.append(payload["jti"])
        return is_token_revoked(payload)

    monkeypatch.setattr("blueprints.common.jwt_callbacks.is_token_revoked", counting_check)
    monkeypatch.setattr("blueprints.common.auth.is_token_revoked", counting_check)

    # Alice's budget follows her from address to address; Bob has his own.
    first, second, third = (_remaining(client, alice, f"10.0.0.{i}") for i in (1, 2, 3))
    assert (second, third) == (first - 1, first - 2)
    assert _remaining(client, bob, "10.0.0.1") == first
    # Verified once per request: the revocation check rode on the limiter's hit, and
    # neither the guard nor flask-jwt-extended asked Redis again.
    assert checked == []


def test_a_forged_token_spends_its_address_budget_not_the_user_it_names(
    client: FlaskClient,
) -> None:
    alice = make_user()
    headers = dict(auth_headers(alice))
    fresh = _remaining(client, dict(auth_headers(make_user())), "10.0.0.1")
    forged = jwt.encode({"sub": str(alice.id), "type": "access"}, "not-our-secret" * 4)
    for _ in range(2):  # the second time too: a token that failed is never remembered
        response = client.get(
            "/api/v1/jobs",
            headers={"Authorization": f"Bearer {forged}"},
            environ_base={"REMOTE_ADDR": "10.9.9.9"},
        )
        assert response.status_code == 401
    assert _remaining(client, headers, "10.0.0.1") == fresh  # Alice's budget is untouched


def test_a_limited_request_costs_one_redis_round_trip_and_its_headers_stay_exact(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    headers = dict(auth_headers(make_user()))
    client.get("/api/v1/jobs", headers=headers)  # Redis has seen the script
    commands: list[str] = []
    # The default limit's client (where the revocation check would also go on its own), and
    # flask-limiter's, which counts only the limits views declare.
    route_storage: Any = limiter.storage
    for redis_client in (redis.client, route_storage.get_connection()):
        execute = redis_client.execute_command

        def counting(*args: Any, _execute: Any = execute, **kwargs: Any) -> Any:
            commands.append(str(args[0]))
            return _execute(*args, **kwargs)

        monkeypatch.setattr(redis_client, "execute_command", counting)
    responses = [client.get("/api/v1/jobs", headers=headers) for _ in range(3)]

    # One round trip: the hit with the token's revocation check inside; no MGET beside it,
    # no GET, no TTL for the headers.
    assert commands == ["EVALSHA"] * 3
    limit = int(responses[0].headers["RateLimit-Limit"])
    assert [int(r.headers["RateLimit-Remaining"]) for r in responses] == [
        limit - 2,
        limit - 3,
        limit - 4,
    ]
    assert all(0 < int(r.headers["RateLimit-Reset"]) <= 61 for r in responses)


def test_every_window_of_the_default_limit_holds_and_views_with_their_own_pay_only_those(
    private_stack: PrivateStacks,
) -> None:
    client = private_stack(ratelimit_default="2/minute;100/hour").client()
    user = make_user()
    headers = dict(auth_headers(user))
    responses = [client.get("/api/v1/jobs", headers=headers) for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 429]
    assert responses[0].headers["RateLimit-Limit"] == "2"  # the window closest to running out
    assert problem_body(responses[2], 429)["detail"] == "2 per 1 minute"
    assert 0 < int(responses[2].headers["Retry-After"]) <= 60

    # Login has limits of its own (10 attempts a minute per address): not the default's 2.
    attempts = [
        client.post("/api/v1/auth/login", json={"email": user.email, "password": "wrong"})
        for _ in range(3)
    ]
    assert [r.status_code for r in attempts] == [401, 401, 401]
    assert attempts[0].headers["RateLimit-Limit"] != "2"
