"""The edge under attack (issue 14): rate-limit keys, secrets, metrics behind a proxy, and
secrets in URLs kept out of the logs. Each test sends the attacker's requests."""

from __future__ import annotations

import secrets
import time
import uuid

import jwt
import pytest
from apiflask import APIFlask
from pydantic import ValidationError
from werkzeug.test import TestResponse

from app import create_app
from config import DEV_SECRET, Settings
from tests.factories import make_user
from tests.support import make_settings, problem_body

JOBS = "/api/v1/jobs"
METRICS_TOKEN = "metrics-" + "m" * 32


def production_settings(base: Settings, **overrides: object) -> Settings:
    """What a production deploy sets: APP_ENV, two real secrets and a metrics token."""
    return make_settings(
        app_env="production",
        secret_key=secrets.token_urlsafe(48),
        jwt_secret_key=secrets.token_urlsafe(48),
        metrics_token=METRICS_TOKEN,
        smtp_url=base.smtp_url,
        stripe_api_base=base.stripe_api_base,
        **overrides,
    )


def _remaining(response: TestResponse) -> int:
    return int(response.headers["RateLimit-Remaining"])


# Secrets -------------------------------------------------------------------------------------


def _forged_token(user_id: uuid.UUID) -> str:
    now = int(time.time())
    claims = {"sub": str(user_id), "type": "access", "fresh": False, "jti": uuid.uuid4().hex,
              "iat": now, "nbf": now, "exp": now + 600}  # fmt: skip
    return jwt.encode(claims, DEV_SECRET, algorithm="HS256")


def test_a_token_forged_with_the_development_secret_opens_nothing(
    app: APIFlask, restore_globals: None, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The repository's DEV_SECRET is public: a deploy that forgot APP_ENV used to sign
    with it, so anyone could mint a token for any user id."""
    victim = make_user()
    for name in ("APP_ENV", "SECRET_KEY", "JWT_SECRET_KEY", "METRICS_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValidationError, match="APP_ENV"):
        # The environment of a deploy that set its database and nothing else.
        create_app(
            Settings(_env_file=None, database_url=settings.database_url,  # type: ignore[call-arg]
                     redis_url=settings.redis_url)
        )  # fmt: skip
    production = create_app(production_settings(settings)).test_client()
    forged = {"Authorization": f"Bearer {_forged_token(victim.id)}"}
    response = production.get("/api/v1/me", headers=forged)
    problem_body(response, 401)


# Metrics and proxies -------------------------------------------------------------------------


def test_production_metrics_need_the_token_even_from_loopback(
    app: APIFlask, restore_globals: None, settings: Settings
) -> None:
    """Behind a proxy on the same host every caller is 127.0.0.1: loopback proves nothing."""
    without_token = production_settings(settings).model_dump() | {"metrics_token": ""}
    with pytest.raises(ValidationError, match="METRICS_TOKEN"):
        Settings(_env_file=None, **without_token)  # type: ignore[call-arg]
    client = create_app(production_settings(settings)).test_client()
    loopback = {"REMOTE_ADDR": "127.0.0.1"}
    problem_body(client.get("/metrics", environ_base=loopback), 401)
    wrong = {"Authorization": "Bearer " + "x" * 40}
    problem_body(client.get("/metrics", headers=wrong, environ_base=loopback), 401)
    scraped = client.get(
        "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, environ_base=loopback
    )
    assert scraped.status_code == 200
    assert "maycole_http_requests_total" in scraped.get_data(as_text=True)
