"""Bearer tokens are verified once per process (blueprints/common/bearer.py): what the
cache must never change is who gets in. Each test first makes a genuine token verify (so
it is cached), then sends the attacker's variant of it."""

from __future__ import annotations

import base64
import json
import time
from datetime import timedelta

from flask.testing import FlaskClient
from flask_jwt_extended import create_access_token, create_refresh_token

from tests.factories import make_user
from tests.support import problem_body

ME = "/api/v1/me"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_cached_token_still_expires_on_time(client: FlaskClient) -> None:
    user = make_user()
    token = create_access_token(identity=str(user.id), expires_delta=timedelta(seconds=2))
    assert client.get(ME, headers=bearer(token)).status_code == 200  # verified and cached
    time.sleep(2.2)
    assert "expired" in problem_body(client.get(ME, headers=bearer(token)), 401)["detail"]


def test_a_token_altered_after_its_genuine_self_was_cached_is_refused(
    client: FlaskClient,
) -> None:
    victim, attacker = make_user(), make_user()
    token = create_access_token(identity=str(attacker.id))
    assert client.get(ME, headers=bearer(token)).json["user"]["id"] == str(attacker.id)  # type: ignore[index]

    # Same signature, the subject swapped for the victim's: a different string, so it is
    # verified from scratch, and the signature does not match.
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = str(victim.id)
    forged_payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    forged = f"{header}.{forged_payload}.{signature}"
    assert client.get(ME, headers=bearer(forged)).status_code == 401
    # And the genuine one still answers for its own user only.
    assert client.get(ME, headers=bearer(token)).json["user"]["id"] == str(attacker.id)  # type: ignore[index]


def test_a_refresh_token_is_no_access_token_even_once_cached(client: FlaskClient) -> None:
    user = make_user()
    refresh = create_refresh_token(identity=str(user.id))
    for _ in range(2):  # the second time from the cache, if it were cached
        response = client.get(ME, headers=bearer(refresh))
        assert problem_body(response, 401)["detail"] == "The access token is invalid."
