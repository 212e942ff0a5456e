"""The edge under attack (issue 14): rate-limit keys, secrets, metrics behind a proxy, and
secrets in URLs kept out of the logs. Each test sends the attacker's requests."""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import jwt
import pytest
from apiflask import APIFlask
from flask.testing import FlaskClient
from pydantic import ValidationError
from werkzeug.test import TestResponse

from app import create_app
from config import DEV_SECRET, Settings
from logs import redact_secrets
from tests.factories import auth_headers, make_api_key, make_user
from tests.support import (
    LOGS,
    PRODUCTION_REQUIRED,
    ROOT,
    PrivateStacks,
    WebServer,
    make_settings,
    problem_body,
    settings_env,
)

JOBS = "/api/v1/jobs"
METRICS_TOKEN = "metrics-" + "m" * 32


def production_settings(base: Settings, **overrides: object) -> Settings:
    """What a production deploy sets (PRODUCTION_REQUIRED), with fresh secrets."""
    return make_settings(
        **{
            **PRODUCTION_REQUIRED,
            "app_env": "production",
            "secret_key": secrets.token_urlsafe(48),
            "jwt_secret_key": secrets.token_urlsafe(48),
            "metrics_token": METRICS_TOKEN,
            "audit_keys": f"k1:{secrets.token_urlsafe(48)}",
            "smtp_url": base.smtp_url,
            "stripe_api_base": base.stripe_api_base,
            **overrides,
        }
    )


def _remaining(response: TestResponse) -> int:
    return int(response.headers["RateLimit-Remaining"])


# Rate-limit keys ---------------------------------------------------------------------------


def test_a_bearer_token_with_a_random_api_key_is_refused_and_counted_by_address(
    client: FlaskClient,
) -> None:
    """Today's attack: a valid token plus a new `X-API-Key: mk_<random>_x` on each request
    gave each request a fresh bucket (the key's prefix) while the token was served."""
    headers = dict(auth_headers(make_user()))
    answers = [
        client.get(
            JOBS,
            headers={**headers, "X-API-Key": f"mk_{secrets.token_hex(6)}_x"},
            environ_base={"REMOTE_ADDR": "10.4.4.4"},
        )
        for _ in range(3)
    ]
    for response in answers:
        body = problem_body(response, 400)
        assert "X-API-Key" in body["detail"] and "Authorization" in body["detail"]
    # One bucket, the address's, whatever key was made up.
    assert [_remaining(r) for r in answers] == [_remaining(answers[0]) - i for i in range(3)]
    # The token's own budget was never touched.
    fresh = client.get(JOBS, headers=headers, environ_base={"REMOTE_ADDR": "10.5.5.5"})
    assert fresh.status_code == 200
    assert _remaining(fresh) == int(fresh.headers["RateLimit-Limit"]) - 1


def test_junk_with_a_victims_key_prefix_is_limited_by_address_not_the_victims_key(
    app: APIFlask, private_stack: PrivateStacks
) -> None:
    client = private_stack(ratelimit_default="5/minute").client()
    victim = make_user()
    secret = make_api_key(victim, ["read"])
    prefix = secret.split("_")[1]

    attacker = [
        client.get(
            JOBS,
            headers={"X-API-Key": f"mk_{prefix}_{secrets.token_urlsafe(8)}"},
            environ_base={"REMOTE_ADDR": "10.6.6.6"},
        ).status_code
        for _ in range(8)
    ]
    assert attacker == [401] * 5 + [429] * 3  # the attacker's address ran out

    served = client.get(
        JOBS, headers={"X-API-Key": secret}, environ_base={"REMOTE_ADDR": "10.1.1.1"}
    )
    assert served.status_code == 200, served.get_data(as_text=True)
    assert _remaining(served) == 4  # the victim's key: its first request of the window
    # The victim's key follows it from address to address; the address is not its budget.
    again = client.get(
        JOBS, headers={"X-API-Key": secret}, environ_base={"REMOTE_ADDR": "10.6.6.6"}
    )
    assert again.status_code == 200 and _remaining(again) == 3


# Secrets -------------------------------------------------------------------------------------


def _forged_token(user_id: uuid.UUID) -> str:
    now = int(time.time())
    claims = {"sub": str(user_id), "type": "access", "fresh": False, "jti": uuid.uuid4().hex,
              "iat": now, "nbf": now, "exp": now + 600}  # fmt: skip
    return jwt.encode(claims, DEV_SECRET, algorithm="HS256")


def test_a_token_forged_with_the_development_secret_opens_nothing(
    app: APIFlask, private_stack: PrivateStacks, settings: Settings, monkeypatch: pytest.MonkeyPatch
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
    production = private_stack(base=production_settings(settings)).client()
    forged = {"Authorization": f"Bearer {_forged_token(victim.id)}"}
    response = production.get("/api/v1/me", headers=forged)
    problem_body(response, 401)


# Metrics and proxies -------------------------------------------------------------------------


def test_production_metrics_need_the_token_even_from_loopback(
    app: APIFlask, private_stack: PrivateStacks, settings: Settings
) -> None:
    """Behind a proxy on the same host every caller is 127.0.0.1: loopback proves nothing."""
    without_token = production_settings(settings).model_dump() | {"metrics_token": ""}
    with pytest.raises(ValidationError, match="METRICS_TOKEN"):
        Settings(_env_file=None, **without_token)  # type: ignore[call-arg]
    client = private_stack(base=production_settings(settings)).client()
    loopback = {"REMOTE_ADDR": "127.0.0.1"}
    problem_body(client.get("/metrics", environ_base=loopback), 401)
    wrong = {"Authorization": "Bearer " + "x" * 40}
    problem_body(client.get("/metrics", headers=wrong, environ_base=loopback), 401)
    scraped = client.get(
        "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, environ_base=loopback
    )
    assert scraped.status_code == 200
    assert "maycole_http_requests_total" in scraped.get_data(as_text=True)


def _gunicorn(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "app:create_app()"]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=30,
                          check=False)  # fmt: skip


def test_production_refuses_to_see_every_client_as_loopback(settings: Settings) -> None:
    """Bound to loopback (a proxy on the same host) with TRUSTED_PROXIES=0, every client
    would be 127.0.0.1: one rate-limit bucket for the world. gunicorn refuses to start."""
    env = settings_env(production_settings(settings, trusted_proxies=0)) | {
        "BIND": "127.0.0.1:0",
        "PROMETHEUS_MULTIPROC_DIR": str(LOGS / "metrics-refused"),
    }
    refused = _gunicorn(env)
    assert refused.returncode != 0
    assert "TRUSTED_PROXIES" in refused.stderr and "ALLOW_DIRECT_LOOPBACK" in refused.stderr
    unix = _gunicorn(env | {"BIND": f"unix:{LOGS / 'refused.sock'}"})
    assert unix.returncode != 0 and "TRUSTED_PROXIES" in unix.stderr


@pytest.fixture(scope="module")
def proxied_server(settings: Settings) -> Iterator[WebServer]:
    """Production behind one proxy on the same host, with gunicorn's access log on."""
    server = WebServer(
        "edge", production_settings(settings, trusted_proxies=1, ratelimit_default="3/minute")
    )
    server.log_path.unlink(missing_ok=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GUNICORN_CMD_ARGS", "--access-logfile -")
        server.start()
    yield server
    server.stop()


def test_behind_a_trusted_proxy_each_client_has_its_own_budget(
    proxied_server: WebServer,
) -> None:
    def status(client: str) -> int:
        return proxied_server.request("GET", "/api", headers={"X-Forwarded-For": client})[0]

    assert [status("203.0.113.7") for _ in range(4)] == [200, 200, 200, 429]
    assert status("198.51.100.8") == 200  # another client behind the same proxy
    # And /metrics asks the token of loopback callers too.
    assert proxied_server.request("GET", "/metrics")[0] == 401


# Secrets in URLs -------------------------------------------------------------------------------


def _log_after(server: WebServer, offset: int, marker: str) -> str:
    deadline = time.monotonic() + 10
    while True:
        text = server.log_path.read_text(errors="replace")[offset:]
        if marker in text or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


def test_tokens_in_urls_are_redacted_in_gunicorn_and_app_logs(proxied_server: WebServer) -> None:
    offset = len(proxied_server.log_path.read_text(errors="replace"))
    invite = secrets.token_urlsafe(32)
    stream, unsubscribe, download = (secrets.token_urlsafe(24) for _ in range(3))
    proxied_server.request("POST", f"/api/v1/invites/{invite}/decline", body={},
                           headers={"X-Forwarded-For": "192.0.2.10"})  # fmt: skip
    proxied_server.request("GET", f"/api/v1/events/stream?token={stream}",
                           headers={"X-Forwarded-For": "192.0.2.11"})  # fmt: skip
    proxied_server.request("POST", f"/api/v1/notifications/unsubscribe?token={unsubscribe}",
                           body={}, headers={"X-Forwarded-For": "192.0.2.12"})  # fmt: skip
    proxied_server.request("GET", f"/api/v1/storage/download?a=1&token={download}",
                           headers={"X-Forwarded-For": "192.0.2.13"})  # fmt: skip
    proxied_server.request("GET", "/healthz?done=1")
    logged = _log_after(proxied_server, offset, "done=1")
    assert "/api/v1/invites/[redacted]/decline" in logged  # gunicorn's line and ours
    assert logged.count("[redacted]") >= 5
    for secret in (invite, stream, unsubscribe, download):
        assert secret not in logged


def test_invite_tokens_stay_out_of_the_request_log(
    app: APIFlask, private_stack: PrivateStacks, capsys: pytest.CaptureFixture[str]
) -> None:
    client = private_stack(log_json=True).client()
    token = secrets.token_urlsafe(32)
    headers = dict(auth_headers(make_user()))
    client.post(f"/api/v1/invites/{token}/accept", json={}, headers=headers)
    client.post(f"/api/v1/invites/{token}/decline", json={})
    err = capsys.readouterr().err
    assert '"path": "/api/v1/invites/[redacted]/accept"' in err
    assert '"path": "/api/v1/invites/[redacted]/decline"' in err
    assert token not in err


def test_log_redaction_leaves_other_paths_alone() -> None:
    assert redact_secrets("/api/v1/teams/1/invites/2") == "/api/v1/teams/1/invites/2"
    assert redact_secrets("GET /api/v1/invites/abc_-9/accept HTTP/1.1") == (
        "GET /api/v1/invites/[redacted]/accept HTTP/1.1"
    )
    assert redact_secrets("/x?a=1&token=s3cr-t_&b=2") == "/x?a=1&token=[redacted]&b=2"
    assert redact_secrets('"/x?token=abc"') == '"/x?token=[redacted]"'
