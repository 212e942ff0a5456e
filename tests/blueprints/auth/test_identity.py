"""Identity over HTTP with a real worker and a real SMTP server: the journeys a frontend
builds on (sign-up to sign-out, password reset, API keys, brute force, mass assignment)."""

from __future__ import annotations

import uuid
from typing import Any

from flask.testing import FlaskClient
from sqlalchemy import select

from extensions import db
from models import ApiKey, AuditLog, User, UserSession
from tests.factories import PASSWORD, auth_headers, make_user
from tests.support import Mailbox, Worker, bearer, problem_body

STRONG = "violet-otter-harbour-42"


def login(client: FlaskClient, email: str, password: str) -> dict[str, Any]:
    response = client.post("/api/v1/auth/login", json={"email": email, "password": password})
    assert response.status_code == 200, response.get_json()
    body: dict[str, Any] = response.get_json()
    return body


def audit_actions() -> list[str]:
    db.session.rollback()
    return list(db.session.scalars(select(AuditLog.action).order_by(AuditLog.id)))


def test_sign_up_verify_sign_in_refresh_reuse_and_sign_out(
    client: FlaskClient, worker: Worker, mailbox: Mailbox
) -> None:
    email = f"ada-{uuid.uuid4().hex[:6]}@example.com"
    created = client.post(
        "/api/v1/auth/register", json={"email": email, "password": STRONG, "name": "Ada"}
    )
    assert created.status_code == 202

    # The verification link really arrives over SMTP.
    token = Mailbox.link_token(mailbox.wait_for(email, "Confirm"), "/verify-email")
    tokens = login(client, email, STRONG)  # unverified accounts may sign in
    me = client.get("/api/v1/me", headers=bearer(tokens["access_token"])).get_json()["user"]
    assert me["email_verified"] is False
    verified = client.post("/api/v1/auth/verify-email", json={"token": token})
    assert verified.status_code == 200 and verified.get_json()["user"]["email_verified"] is True
    me = client.get("/api/v1/me", headers=bearer(tokens["access_token"])).get_json()["user"]
    assert me["email_verified"] is True

    # Refresh rotates: a new pair, and the old refresh token is spent.
    first_refresh = tokens["refresh_token"]
    rotated = client.post("/api/v1/auth/refresh", json={"refresh_token": first_refresh})
    assert rotated.status_code == 200
    second = rotated.get_json()
    assert second["refresh_token"] != first_refresh
    assert client.get("/api/v1/me", headers=bearer(second["access_token"])).status_code == 200

    # Presenting the spent token again = theft: the whole family dies, newest tokens included.
    reused = client.post("/api/v1/auth/refresh", json={"refresh_token": first_refresh})
    assert "already used" in problem_body(reused, 401)["detail"]
    again = client.post("/api/v1/auth/refresh", json={"refresh_token": second["refresh_token"]})
    problem_body(again, 401)
    problem_body(client.get("/api/v1/me", headers=bearer(second["access_token"])), 401)
    assert "auth.refresh_token_reused" in audit_actions()

    # A new sign-in works; logout ends it at once (access and refresh tokens).
    fresh = login(client, email, STRONG)
    sessions = client.get("/api/v1/auth/sessions", headers=bearer(fresh["access_token"]))
    assert [s["current"] for s in sessions.get_json()["items"]] == [True]
    assert (
        client.post("/api/v1/auth/logout", headers=bearer(fresh["access_token"])).status_code == 204
    )
    problem_body(client.get("/api/v1/me", headers=bearer(fresh["access_token"])), 401)
    refresh_after = client.post(
        "/api/v1/auth/refresh", json={"refresh_token": fresh["refresh_token"]}
    )
    problem_body(refresh_after, 401)


def test_password_reset_signs_out_everywhere_and_the_link_works_once(
    client: FlaskClient, worker: Worker, mailbox: Mailbox
) -> None:
    user = make_user()
    laptop = login(client, user.email, PASSWORD)
    phone = login(client, user.email, PASSWORD)

    forgot = client.post("/api/v1/auth/password/forgot", json={"email": user.email.upper()})
    assert forgot.status_code == 202
    unknown = client.post("/api/v1/auth/password/forgot", json={"email": "nobody@example.com"})
    assert unknown.get_json() == forgot.get_json()  # no way to learn who has an account
    token = Mailbox.link_token(mailbox.wait_for(user.email, "Reset"), "/reset-password")

    weak = client.post(
        "/api/v1/auth/password/reset", json={"token": token, "password": "password1"}
    )
    assert "password" in problem_body(weak, 422)["errors"]
    done = client.post("/api/v1/auth/password/reset", json={"token": token, "password": STRONG})
    assert done.status_code == 204
    for device in (laptop, phone):
        problem_body(client.get("/api/v1/me", headers=bearer(device["access_token"])), 401)
        gone = client.post("/api/v1/auth/refresh", json={"refresh_token": device["refresh_token"]})
        problem_body(gone, 401)
    replay = client.post(
        "/api/v1/auth/password/reset", json={"token": token, "password": STRONG + "x"}
    )
    problem_body(replay, 422)
    login(client, user.email, STRONG)
    problem_body(
        client.post("/api/v1/auth/login", json={"email": user.email, "password": PASSWORD}), 401
    )
    assert mailbox.wait_for(user.email, "password was changed")


def test_changing_the_password_keeps_this_session_and_ends_the_others(client: FlaskClient) -> None:
    user = make_user()
    here, there = login(client, user.email, PASSWORD), login(client, user.email, PASSWORD)
    changed = client.post(
        "/api/v1/auth/password/change",
        json={"current_password": PASSWORD, "new_password": STRONG},
        headers=bearer(here["access_token"]),
    )
    assert changed.status_code == 204
    assert client.get("/api/v1/me", headers=bearer(here["access_token"])).status_code == 200
    problem_body(client.get("/api/v1/me", headers=bearer(there["access_token"])), 401)
    wrong = client.post(
        "/api/v1/auth/password/change",
        json={"current_password": "not it", "new_password": STRONG + "!"},
        headers=bearer(here["access_token"]),
    )
    assert "current_password" in problem_body(wrong, 422)["errors"]


def test_signing_out_another_device(client: FlaskClient) -> None:
    user = make_user()
    here, there = login(client, user.email, PASSWORD), login(client, user.email, PASSWORD)
    listed = client.get("/api/v1/auth/sessions", headers=bearer(here["access_token"])).get_json()
    other = next(s for s in listed["items"] if not s["current"])
    ended = client.delete(
        f"/api/v1/auth/sessions/{other['id']}", headers=bearer(here["access_token"])
    )
    assert ended.status_code == 204
    problem_body(client.get("/api/v1/me", headers=bearer(there["access_token"])), 401)
    assert client.get("/api/v1/me", headers=bearer(here["access_token"])).status_code == 200
    stranger = make_user()
    theirs = client.delete(f"/api/v1/auth/sessions/{other['id']}", headers=auth_headers(stranger))
    problem_body(theirs, 404)


def test_api_keys_act_within_their_scopes_and_die_when_revoked(client: FlaskClient) -> None:
    user = make_user()
    headers = auth_headers(user)
    # A token from no sign-in proves nothing: the password comes along.
    created = client.post(
        "/api/v1/auth/api-keys",
        json={"name": "ci", "scopes": ["read"], "current_password": PASSWORD},
        headers=headers,
    )
    assert created.status_code == 201
    body = created.get_json()
    secret = body["secret"]
    assert secret.startswith("mk_") and body["api_key"]["prefix"] in secret
    stored = db.session.scalar(select(ApiKey).where(ApiKey.id == uuid.UUID(body["api_key"]["id"])))
    assert stored is not None and secret not in (stored.key_hash, stored.prefix)  # hash only

    key = {"X-API-Key": secret}
    assert client.get("/api/v1/me", headers=key).get_json()["user"]["id"] == str(user.id)
    write = client.patch("/api/v1/me", json={"name": "Robot"}, headers=key)
    assert "'write' scope" in problem_body(write, 403)["detail"]
    # Keys never manage credentials, even their own.
    problem_body(client.get("/api/v1/auth/api-keys", headers=key), 403)
    problem_body(client.get("/api/v1/auth/api-keys", headers={"X-API-Key": secret + "x"}), 401)
    listed = client.get("/api/v1/auth/api-keys", headers=headers).get_json()["items"]
    assert [k["name"] for k in listed] == ["ci"] and "secret" not in listed[0]
    assert listed[0]["last_used_at"] is not None

    writer = client.post(
        "/api/v1/auth/api-keys",
        json={"name": "deploy", "scopes": ["read", "write"], "current_password": PASSWORD},
        headers=headers,
    ).get_json()
    renamed = client.patch(
        "/api/v1/me", json={"name": "Robot"}, headers={"X-API-Key": writer["secret"]}
    )
    assert renamed.status_code == 200 and renamed.get_json()["user"]["name"] == "Robot"

    revoked = client.delete(f"/api/v1/auth/api-keys/{body['api_key']['id']}", headers=headers)
    assert revoked.status_code == 204
    problem_body(client.get("/api/v1/me", headers=key), 401)
    actions = audit_actions()
    assert actions.count("api_key.created") == 2 and "api_key.revoked" in actions


def test_brute_force_login_is_rate_limited_per_account_and_address(client: FlaskClient) -> None:
    user = make_user()
    statuses = [
        client.post(
            "/api/v1/auth/login", json={"email": user.email, "password": f"guess-{i}"}
        ).status_code
        for i in range(8)
    ]
    assert statuses[:5] == [401] * 5  # ratelimit_login_failures: 5/minute by default
    assert 429 in statuses[5:]
    limited = client.post("/api/v1/auth/login", json={"email": user.email, "password": PASSWORD})
    problem_body(limited, 429)
    assert int(limited.headers["Retry-After"]) > 0
    # Another account from the same address is not locked out by this one's attacker.
    other = make_user()
    login(client, other.email, PASSWORD)
    assert audit_actions().count("auth.login_failed") >= 5


def test_mass_assignment_is_impossible(client: FlaskClient) -> None:
    sneaky = client.post(
        "/api/v1/auth/register",
        json={"email": "eve@example.com", "password": STRONG, "name": "Eve", "is_admin": True},
    )
    assert "is_admin" in problem_body(sneaky, 422)["errors"]
    assert db.session.scalar(select(User).where(User.email == "eve@example.com")) is None

    user = make_user()
    for field, value in [
        ("is_admin", True), ("email_verified", True), ("email", "x@example.com"),
        ("role", "owner"), ("team_id", str(uuid.uuid4())),
        ("email_verified_at", "2020-01-01T00:00:00Z"),
    ]:  # fmt: skip
        response = client.patch("/api/v1/me", json={field: value}, headers=auth_headers(user))
        assert field in problem_body(response, 422)["errors"], field
    db.session.expire_all()
    fresh = db.session.get(User, user.id)
    assert fresh is not None and not fresh.is_admin and fresh.email == user.email


def test_profile_and_settings(client: FlaskClient) -> None:
    headers = auth_headers(make_user())
    patched = client.patch(
        "/api/v1/me", json={"name": "Grace", "timezone": "Europe/Paris", "locale": "fr-FR"},
        headers=headers,
    )  # fmt: skip
    assert patched.status_code == 200
    assert {k: patched.get_json()["user"][k] for k in ("name", "timezone", "locale")} == {
        "name": "Grace", "timezone": "Europe/Paris", "locale": "fr-FR",
    }  # fmt: skip
    problem_body(
        client.patch("/api/v1/me", json={"timezone": "Mars/Olympus"}, headers=headers), 422
    )
    problem_body(client.patch("/api/v1/me", json={"name": None}, headers=headers), 422)
    avatar = client.patch("/api/v1/me", json={"avatar_file_id": str(uuid.uuid4())}, headers=headers)
    assert "avatar_file_id" in problem_body(avatar, 422)["errors"]

    settings = client.patch(
        "/api/v1/me/settings",
        json={"settings": {"theme": "dark", "ui.density": 2}},
        headers=headers,
    )
    assert settings.get_json() == {"settings": {"theme": "dark", "ui.density": 2}}
    removed = client.patch(
        "/api/v1/me/settings", json={"settings": {"theme": None}}, headers=headers
    )
    assert removed.get_json() == {"settings": {"ui.density": 2}}
    assert client.get("/api/v1/me/settings", headers=headers).get_json() == {
        "settings": {"ui.density": 2}
    }


def test_deleting_my_account_signs_me_out_and_anonymises_me(
    client: FlaskClient, worker: Worker
) -> None:
    from tests.support import wait_job

    user = make_user(email="leaving@example.com")
    tokens = login(client, user.email, PASSWORD)
    response = client.delete("/api/v1/me", headers=bearer(tokens["access_token"]))
    assert response.status_code == 202
    job_id = response.get_json()["job"]["id"]
    assert response.headers["Location"] == f"/api/v1/jobs/{job_id}"
    problem_body(client.get("/api/v1/me", headers=bearer(tokens["access_token"])), 401)
    wait_job(job_id, "succeeded", describe=worker.describe)

    db.session.expire_all()
    gone = db.session.get(User, user.id)
    assert gone is not None and gone.deleted_at is not None
    assert gone.email != "leaving@example.com" and gone.name == "Deleted user"
    assert gone.password_hash is None
    live = db.session.scalars(
        select(UserSession).where(UserSession.user_id == user.id, UserSession.revoked_at.is_(None))
    ).all()
    assert live == []
    assert "user.anonymised" in audit_actions()  # the audit trail stays
    problem_body(
        client.post(
            "/api/v1/auth/login", json={"email": "leaving@example.com", "password": PASSWORD}
        ),
        401,
    )
