"""Issue 14's takeover and abuse paths around credentials, each as the attacker's requests
over HTTP (a real worker delivers the email to a real SMTP server).

- Account recovery revokes every credential: sessions, refresh tokens, access tokens (with
  or without a session), stream tokens and API keys.
- A password change ends the other sessions; API keys only when the user asks.
- Creating an API key needs a verified address and a fresh proof of the password, and
  emails the owner at once.
- Signing up does not reveal which addresses have accounts.
- Failed logins from other addresses never lock the owner's own device out.
"""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from typing import Any

from flask.testing import FlaskClient
from flask_jwt_extended import create_access_token, decode_token
from sqlalchemy import func, select, update
from werkzeug.test import TestResponse

from extensions import db
from models import ApiKey, Job, Team, User, UserSession
from services.jobs import names
from tests.factories import PASSWORD, auth_headers, make_user
from tests.support import Mailbox, Worker, bearer, problem_body

NEW_PASSWORD = "violet-otter-harbour-42"
KEYS = "/api/v1/auth/api-keys"
STREAM = "/api/v1/events/stream"


def sign_in(
    client: FlaskClient,
    email: str,
    password: str = PASSWORD,
    *,
    ip: str = "127.0.0.1",
    user_agent: str = "pytest",
) -> TestResponse:
    return client.post(
        "/api/v1/auth/login", json={"email": email, "password": password},
        headers={"User-Agent": user_agent}, environ_base={"REMOTE_ADDR": ip},
    )  # fmt: skip


def tokens_of(response: TestResponse) -> dict[str, Any]:
    assert response.status_code == 200, response.get_data(as_text=True)
    body: dict[str, Any] = response.get_json()
    return body


def stream_opens(client: FlaskClient, url: str) -> int:
    """The status of opening the stream at `url` (closed again at once)."""
    response = client.get(url, buffered=False)
    try:
        return response.status_code
    finally:
        response.close()


def key_count(user_id: uuid.UUID) -> int:
    db.session.rollback()
    return db.session.scalar(select(func.count()).where(ApiKey.user_id == user_id)) or 0


def reset_password(client: FlaskClient, mailbox: Mailbox, email: str) -> None:
    """Alice's recovery: "forgot password", the link from her mailbox, a new password."""
    assert client.post("/api/v1/auth/password/forgot", json={"email": email}).status_code == 202
    token = Mailbox.link_token(mailbox.wait_for(email, "Reset"), "/reset-password")
    # Start early in a second, so that her sign-in right after lands in the same second as
    # the reset's cutoff (whole-second comparisons would refuse it).
    fraction = time.time() % 1
    if fraction > 0.5:
        time.sleep(1 - fraction)
    done = client.post(
        "/api/v1/auth/password/reset", json={"token": token, "password": NEW_PASSWORD}
    )
    assert done.status_code == 204, done.get_data(as_text=True)


# --- account recovery revokes every credential -------------------------------------------


def test_a_password_reset_revokes_every_credential_an_attacker_holds(
    client: FlaskClient, worker: Worker, mailbox: Mailbox
) -> None:
    alice = make_user(email=f"alice-{uuid.uuid4().hex[:6]}@corp.example")
    # The attacker phished Alice's password: signs in, mints a key, keeps every token.
    stolen = tokens_of(sign_in(client, alice.email, ip="203.0.113.66", user_agent="evil"))
    minted = client.post(
        KEYS, json={"name": "backdoor", "scopes": ["read", "write"]},
        headers=bearer(stolen["access_token"]),
    )  # fmt: skip
    assert minted.status_code == 201, minted.get_data(as_text=True)
    key = {"X-API-Key": minted.get_json()["secret"]}
    stream_token = client.post("/api/v1/events/token", headers=bearer(stolen["access_token"]))
    stream_url = f"{STREAM}?token={stream_token.get_json()['token']}"
    # An access token that belongs to no session at all.
    stray = bearer(create_access_token(identity=str(alice.id)))
    for headers in (key, bearer(stolen["access_token"]), stray):
        assert client.get("/api/v1/me", headers=headers).status_code == 200
    assert stream_opens(client, stream_url) == 200

    reset_password(client, mailbox, alice.email)

    for headers in (key, bearer(stolen["access_token"]), stray):
        problem_body(client.get("/api/v1/me", headers=headers), 401)
    refreshed = client.post("/api/v1/auth/refresh", json={"refresh_token": stolen["refresh_token"]})
    problem_body(refreshed, 401)
    assert "revoked" in problem_body(client.get(stream_url), 401)["detail"]
    problem_body(sign_in(client, alice.email, ip="203.0.113.66", user_agent="evil"), 401)

    # Alice signs in at once (in the same second as the reset): her tokens work.
    mine = tokens_of(sign_in(client, alice.email, NEW_PASSWORD))
    assert client.get("/api/v1/me", headers=bearer(mine["access_token"])).status_code == 200
    fresh = client.post("/api/v1/events/token", headers=bearer(mine["access_token"]))
    assert stream_opens(client, f"{STREAM}?token={fresh.get_json()['token']}") == 200
    listed = client.get(KEYS, headers=bearer(mine["access_token"])).get_json()["items"]
    assert listed == []  # the backdoor key is revoked, not merely hidden


def test_an_address_registered_first_by_an_attacker_is_recovered_by_its_owner(
    client: FlaskClient, worker: Worker, mailbox: Mailbox
) -> None:
    email = f"alice-{uuid.uuid4().hex[:6]}@corp.example"
    registered = client.post(
        "/api/v1/auth/register", json={"email": email, "password": PASSWORD, "name": "Alice"}
    )
    assert registered.status_code == 202
    attacker = tokens_of(sign_in(client, email, ip="203.0.113.66", user_agent="evil"))
    headers = bearer(attacker["access_token"])
    # An unverified address mints no keys, even with the password.
    refused = client.post(
        KEYS, json={"name": "backdoor", "scopes": ["read"], "current_password": PASSWORD},
        headers=headers,
    )  # fmt: skip
    body = problem_body(refused, 403)
    assert body["type"].endswith("/email-not-verified") and "Verify your email" in body["detail"]
    user = db.session.scalar(select(User).where(User.email == email))
    assert user is not None and key_count(user.id) == 0
    token = client.post("/api/v1/events/token", headers=headers).get_json()["token"]

    # Alice signs up: the same answer, and her mailbox tells her what to do.
    again = client.post(
        "/api/v1/auth/register", json={"email": email, "password": NEW_PASSWORD, "name": "Alice"}
    )
    assert (again.status_code, again.get_json()) == (202, registered.get_json())
    notice = mailbox.wait_for(email, "Someone tried to sign up")
    assert "Forgot password" in Mailbox.text_of(notice)
    reset_password(client, mailbox, email)

    problem_body(client.get("/api/v1/me", headers=headers), 401)
    refresh = {"refresh_token": attacker["refresh_token"]}
    problem_body(client.post("/api/v1/auth/refresh", json=refresh), 401)
    problem_body(client.get(f"{STREAM}?token={token}"), 401)
    # Her reset verified the address: a fresh sign-in now mints keys.
    mine = tokens_of(sign_in(client, email, NEW_PASSWORD))
    minted = client.post(
        KEYS, json={"name": "mine", "scopes": ["read"]}, headers=bearer(mine["access_token"])
    )
    assert minted.status_code == 201, minted.get_data(as_text=True)


# --- password change ---------------------------------------------------------------------


def test_a_password_change_ends_other_sessions_and_revokes_keys_only_when_asked(
    client: FlaskClient,
) -> None:
    user = make_user()
    here = tokens_of(sign_in(client, user.email))
    there = tokens_of(sign_in(client, user.email, ip="198.51.100.7"))
    minted = client.post(
        KEYS, json={"name": "ci", "scopes": ["read"]}, headers=bearer(here["access_token"])
    )
    key = {"X-API-Key": minted.get_json()["secret"]}

    changed = client.post(
        "/api/v1/auth/password/change",
        json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
        headers=bearer(here["access_token"]),
    )
    assert changed.status_code == 204, changed.get_data(as_text=True)
    problem_body(client.get("/api/v1/me", headers=bearer(there["access_token"])), 401)
    assert client.get("/api/v1/me", headers=bearer(here["access_token"])).status_code == 200
    assert client.get("/api/v1/me", headers=key).status_code == 200  # kept: not asked

    changed = client.post(
        "/api/v1/auth/password/change",
        json={"current_password": NEW_PASSWORD, "new_password": PASSWORD + " again",
              "revoke_api_keys": True},
        headers=bearer(here["access_token"]),
    )  # fmt: skip
    assert changed.status_code == 204, changed.get_data(as_text=True)
    problem_body(client.get("/api/v1/me", headers=key), 401)
    assert client.get("/api/v1/me", headers=bearer(here["access_token"])).status_code == 200


# --- creating API keys -------------------------------------------------------------------


def test_an_api_key_needs_a_fresh_proof_of_the_password(client: FlaskClient) -> None:
    user = make_user()
    signed_in = tokens_of(sign_in(client, user.email))
    # A stolen token whose sign-in is older than a few minutes, refreshed to look new.
    db.session.execute(
        update(UserSession)
        .where(UserSession.id == uuid.UUID(decode_token(signed_in["access_token"])["sid"]))
        .values(created_at=func.now() - timedelta(minutes=10))
    )
    db.session.commit()
    refreshed = client.post(
        "/api/v1/auth/refresh", json={"refresh_token": signed_in["refresh_token"]}
    )
    stale = bearer(tokens_of(refreshed)["access_token"])
    unsigned = auth_headers(user)  # a token from no sign-in at all

    for headers in (stale, unsigned):
        response = client.post(KEYS, json={"name": "ci", "scopes": ["read"]}, headers=headers)
        body = problem_body(response, 403)
        assert body["type"].endswith("/fresh-sign-in-required")
        assert "current_password" in body["detail"]
    wrong = client.post(
        KEYS, json={"name": "ci", "scopes": ["read"], "current_password": "not it"}, headers=stale
    )
    assert "current_password" in problem_body(wrong, 422)["errors"]
    assert key_count(user.id) == 0

    right = client.post(
        KEYS, json={"name": "ci", "scopes": ["read"], "current_password": PASSWORD}, headers=stale
    )
    assert right.status_code == 201, right.get_data(as_text=True)
    # A sign-in of a moment ago is proof enough.
    fresh = bearer(tokens_of(sign_in(client, user.email))["access_token"])
    again = client.post(KEYS, json={"name": "deploy", "scopes": ["write"]}, headers=fresh)
    assert again.status_code == 201, again.get_data(as_text=True)
    assert key_count(user.id) == 2


def test_wrong_current_passwords_are_limited_per_user(client: FlaskClient) -> None:
    user = make_user()
    headers = auth_headers(user)
    statuses = [
        client.post(
            KEYS, json={"name": "ci", "scopes": ["read"], "current_password": f"guess {i}"},
            headers=headers,
        ).status_code
        for i in range(7)
    ]  # fmt: skip
    assert statuses[:5] == [422] * 5  # ratelimit_password_confirm_failures: 5/minute
    assert statuses[5:] == [429, 429]
    limited = client.post(
        KEYS, json={"name": "ci", "scopes": ["read"], "current_password": PASSWORD},
        headers=headers,
    )  # fmt: skip
    problem_body(limited, 429)
    assert key_count(user.id) == 0


def test_the_owner_is_emailed_about_a_new_key_and_cannot_switch_it_off(
    client: FlaskClient, worker: Worker, mailbox: Mailbox
) -> None:
    user = make_user()
    headers = bearer(tokens_of(sign_in(client, user.email))["access_token"])
    switch_off = client.put(
        "/api/v1/notifications/preferences",
        json={"preferences": {"security": {"email": False}}}, headers=headers,
    )  # fmt: skip
    assert "security" in problem_body(switch_off, 422)["errors"]
    minted = client.post(KEYS, json={"name": "deploy bot", "scopes": ["write"]}, headers=headers)
    prefix = minted.get_json()["api_key"]["prefix"]

    message = mailbox.wait_for(user.email, "A new API key was created")
    text_part = Mailbox.text_of(message)
    assert "deploy bot" in text_part and f"mk_{prefix}_" in text_part
    assert "Revoke it" in text_part
    assert "List-Unsubscribe" not in message  # a security notice has no way out


# --- sign-up does not reveal accounts -----------------------------------------------------


def test_signing_up_with_a_taken_address_answers_the_same_and_tells_its_owner(
    client: FlaskClient, worker: Worker, mailbox: Mailbox
) -> None:
    owner = make_user(email=f"bob-{uuid.uuid4().hex[:6]}@example.com", name="Bob")
    newcomer = f"carol-{uuid.uuid4().hex[:6]}@example.com"

    def register(email: str, password: str = NEW_PASSWORD) -> TestResponse:
        return client.post(
            "/api/v1/auth/register", json={"email": email, "password": password, "name": "Eve"}
        )

    fresh, taken = register(newcomer), register(owner.email.upper())
    assert (taken.status_code, taken.get_json()) == (fresh.status_code, fresh.get_json()) == (
        202, {"status": "accepted", "detail": "Check the inbox of this address to continue."},
    )  # fmt: skip
    # A weak password is refused alike: the policy is checked before the address.
    new_weak, taken_weak = (
        problem_body(register(email, "password1"), 422) for email in (f"x-{newcomer}", owner.email)
    )
    assert (taken_weak["detail"], taken_weak["errors"]) == (new_weak["detail"], new_weak["errors"])

    db.session.rollback()
    assert db.session.scalar(select(func.count()).select_from(User).where(
        func.lower(User.email) == owner.email.lower())) == 1  # fmt: skip
    teams = db.session.scalars(select(Team.name).where(Team.created_by_id == owner.id)).all()
    assert teams == ["Bob's team"]  # nothing was added to or changed in Bob's account
    mailbox.wait_for(newcomer, "Confirm")
    notice = mailbox.wait_for(owner.email, "Someone tried to sign up")
    assert "Forgot password" in Mailbox.text_of(notice)

    # Anyone may send the address again: its owner hears of it once an hour, not every time.
    assert register(owner.email).status_code == 202
    db.session.rollback()
    notices = db.session.scalar(
        select(func.count()).select_from(Job).where(
            Job.type == names.EMAIL_SEND, Job.args["template"].astext == "account_exists"
        )
    )  # fmt: skip
    assert notices == 1


# --- failed logins -----------------------------------------------------------------------


def test_failed_logins_from_elsewhere_never_lock_the_owner_out(client: FlaskClient) -> None:
    owner = make_user()
    device = {"ip": "192.0.2.10", "user_agent": "Firefox on the owner's laptop"}
    # Successes do not count: the owner signs in more often than any failure limit allows.
    for _ in range(6):
        tokens_of(sign_in(client, owner.email, **device))

    # A brute force spread over many addresses, under each address's own limit.
    statuses = [
        sign_in(client, owner.email, f"guess {n}", ip=f"10.66.{n % 12}.1").status_code
        for n in range(40)
    ]
    assert set(statuses[:30]) == {401}  # ratelimit_login_failures_per_account: 30/hour
    assert set(statuses[30:]) == {429}  # slowed down for the account as a whole
    # A new device trying the right password meets that limit too...
    problem_body(sign_in(client, owner.email, ip="198.51.100.99", user_agent="new phone"), 429)
    # ...but the owner's own device signs in.
    tokens_of(sign_in(client, owner.email, **device))


def test_failures_from_one_address_lock_only_that_address_out(client: FlaskClient) -> None:
    owner = make_user()
    attacker = [sign_in(client, owner.email, f"guess {n}", ip="10.66.0.1") for n in range(6)]
    assert [r.status_code for r in attacker] == [401] * 5 + [429]
    problem_body(sign_in(client, owner.email, ip="10.66.0.1"), 429)  # even the right one
    tokens_of(sign_in(client, owner.email, ip="192.0.2.10"))  # elsewhere: never seen, fine
