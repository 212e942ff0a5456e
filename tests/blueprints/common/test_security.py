"""The HTTP perimeter: CORS allow-list, security headers, trusted proxies, limiter fallback."""

from __future__ import annotations

from apiflask import APIFlask
from flask.testing import FlaskClient
from sqlalchemy import select

from config import Settings
from extensions import db
from models import AuditLog
from scripts.devservices import free_port
from tests.blueprints.common.test_edge_security import production_settings
from tests.factories import PASSWORD, auth_headers, make_user
from tests.support import PrivateStacks, problem_body

FRONTEND = "https://app.example.com"


def test_cors_allows_only_configured_frontends(app: APIFlask, private_stack: PrivateStacks) -> None:
    client = private_stack(cors_origins=f"{FRONTEND}, https://admin.example.com").client()
    preflight = client.options(
        "/api/v1/auth/login",
        headers={"Origin": FRONTEND, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "Content-Type, Idempotency-Key"},
    )  # fmt: skip
    assert preflight.headers["Access-Control-Allow-Origin"] == FRONTEND
    assert "idempotency-key" in preflight.headers["Access-Control-Allow-Headers"].lower()
    evil = client.get("/api/v1/jobs", headers={"Origin": "https://evil.example.com"})
    assert "Access-Control-Allow-Origin" not in evil.headers
    ops = client.get("/healthz", headers={"Origin": FRONTEND})
    assert "Access-Control-Allow-Origin" not in ops.headers  # only /api/* is for browsers
    allowed = client.get("/api/v1/jobs", headers={"Origin": FRONTEND})
    assert "X-Request-ID" in allowed.headers["Access-Control-Expose-Headers"]


def _preflight_allows(client: FlaskClient, origin: str) -> bool:
    """Whether a browser on `origin` may send an authenticated JSON POST (the preflight)."""
    response = client.options(
        "/api/v1/auth/login",
        headers={"Origin": origin, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "Authorization, Content-Type"},
    )  # fmt: skip
    allowed = response.headers.get("Access-Control-Allow-Origin") == origin
    if allowed:
        assert "authorization" in response.headers["Access-Control-Allow-Headers"].lower()
    return allowed


def test_development_answers_the_usual_frontend_dev_servers(
    app: APIFlask, private_stack: PrivateStacks
) -> None:
    """A frontend on Vite, Next, Angular or Vue CLI talks to `make run` with no setting."""
    dev = private_stack(keep="all", app_env="development").client()
    for origin in ("http://localhost:5173", "http://127.0.0.1:3000", "http://localhost:4200",
                   "http://127.0.0.1:8080", "http://localhost:3000"):  # fmt: skip
        assert _preflight_allows(dev, origin), origin
    for origin in ("http://localhost:9999", "https://localhost:5173", "https://evil.example.com"):
        assert not _preflight_allows(dev, origin), origin
    # The frontend emails link to (FRONTEND_URL) is one too, on whatever port it runs.
    own = private_stack(
        keep="all", app_env="development", frontend_url="http://localhost:3001/app"
    ).client()
    assert _preflight_allows(own, "http://localhost:3001")
    # CORS_ORIGINS, once set, is the whole list, in development too.
    configured = private_stack(keep="all", app_env="development", cors_origins=FRONTEND).client()
    assert _preflight_allows(configured, FRONTEND)
    assert not _preflight_allows(configured, "http://localhost:5173")


def test_production_answers_only_the_configured_origins(
    app: APIFlask, private_stack: PrivateStacks, settings: Settings
) -> None:
    """Production's list is CORS_ORIGINS and nothing else (no localhost by default)."""
    production = private_stack(base=production_settings(settings)).client()
    for origin in ("http://localhost:5173", "http://localhost:3000", FRONTEND):
        assert not _preflight_allows(production, origin), origin
    configured = private_stack(base=production_settings(settings, cors_origins=FRONTEND)).client()
    assert _preflight_allows(configured, FRONTEND)
    assert not _preflight_allows(configured, "http://localhost:5173")


def test_security_headers_on_api_responses(client: FlaskClient) -> None:
    response = client.get("/api/v1/me", headers=auth_headers(make_user()))
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    assert response.headers["Cache-Control"] == "no-store"  # personal data is never cached
    assert "Strict-Transport-Security" not in response.headers  # plain HTTP here
    secure = client.get("/healthz", base_url="https://api.example.com")
    assert secure.headers["Strict-Transport-Security"].startswith("max-age=")
    problem = client.get("/nope")
    assert problem.headers["X-Content-Type-Options"] == "nosniff"  # errors too


def _login_ip(client: FlaskClient, email: str, forwarded_for: str) -> str:
    client.post(
        "/api/v1/auth/login", json={"email": email, "password": PASSWORD},
        headers={"X-Forwarded-For": forwarded_for}, environ_base={"REMOTE_ADDR": "10.0.0.7"},
    )  # fmt: skip
    db.session.rollback()
    ip = db.session.scalar(
        select(AuditLog.ip)
        .where(AuditLog.action == "auth.login_succeeded")
        .order_by(AuditLog.id.desc())
    )
    return str(ip)


def test_forwarded_for_is_ignored_unless_a_proxy_is_trusted(
    app: APIFlask, private_stack: PrivateStacks
) -> None:
    user = make_user()
    direct = private_stack(trusted_proxies=0).client()
    assert _login_ip(direct, user.email, "203.0.113.9") == "10.0.0.7"  # spoofing is useless
    proxied = private_stack(trusted_proxies=1).client()
    # One trusted hop: the address the proxy saw, not what the client claimed before it.
    assert _login_ip(proxied, user.email, "198.51.100.1, 203.0.113.9") == "203.0.113.9"


def test_rate_limits_hold_in_memory_when_redis_is_down(
    app: APIFlask, private_stack: PrivateStacks
) -> None:
    user = make_user()
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    client = private_stack(
        redis_url=dead_redis, celery_broker_url=app.config["SETTINGS"].broker_url,
        ratelimit_login_failures="2/minute",
    ).client()  # fmt: skip
    attempts = [
        client.post("/api/v1/auth/login", json={"email": user.email, "password": "nope"})
        for _ in range(3)
    ]
    assert [r.status_code for r in attempts[:2]] == [401, 401]  # the API keeps serving
    problem_body(attempts[2], 429)  # and still limits, per process


def test_production_limits_fail_closed_when_redis_is_down(
    app: APIFlask, private_stack: PrivateStacks
) -> None:
    """A password guesser during a Redis outage: with one counter per process, 2/minute
    would be 2 per process and minute. Production answers 503 and checks no password."""
    user = make_user()
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    client = private_stack(
        redis_url=dead_redis, celery_broker_url=app.config["SETTINGS"].broker_url,
        ratelimit_login_failures="2/minute", ratelimit_login="2/minute",
        ratelimit_memory_fallback=False,
    ).client()  # fmt: skip
    guesses = [
        client.post("/api/v1/auth/login", json={"email": user.email, "password": f"guess-{i}"})
        for i in range(6)
    ]
    for response in guesses:
        problem_body(response, 503)
        assert response.headers["Retry-After"] == "5"
    # A route that pays only the default limit fails closed too, before any other check.
    problem_body(client.get("/api/v1/jobs"), 503)
    # The right password is not let in either while nothing can count the attempts.
    problem_body(
        client.post("/api/v1/auth/login", json={"email": user.email, "password": PASSWORD}), 503
    )


def test_revocation_check_fails_closed_when_redis_is_down(
    app: APIFlask, private_stack: PrivateStacks
) -> None:
    headers = auth_headers(make_user())
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    client = private_stack(redis_url=dead_redis).client()
    response = client.get("/api/v1/me", headers=headers)
    body = problem_body(response, 503)
    assert "revocation" in body["detail"]
    assert response.headers["Retry-After"] == "5"
