"""Who may open an event stream, and for how long: credentials, stream tokens, the stream's
rate limit, per-user caps, and revocation (sign-out, password reset) while streaming.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from flask.testing import FlaskClient
from flask_jwt_extended import create_access_token

from extensions import db
from services.core import tokens
from services.identity import sessions
from services.messaging import realtime
from tests.blueprints.events.sse import STREAM, SSEReader, client_stream
from tests.factories import auth_headers, make_user
from tests.support import PrivateStacks, bearer, problem_body

# --- credentials ---------------------------------------------------------------------------


def test_anonymous_and_bad_credentials_get_problem_json_before_any_streaming(
    client: FlaskClient,
) -> None:
    problem_body(client.get(STREAM), 401)
    problem_body(client.get(STREAM, headers=bearer("not-a-jwt")), 401)
    problem_body(client.get(f"{STREAM}?token=forged"), 401)
    problem_body(client.post("/api/v1/events/token"), 401)


def test_a_stream_token_opens_only_the_stream_and_only_briefly(client: FlaskClient) -> None:
    user = make_user()
    response = client.post("/api/v1/events/token", headers=auth_headers(user))
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    minted = response.get_json()
    assert minted["expires_in"] == 60
    token = minted["token"]

    with client_stream(client, f"{STREAM}?token={token}") as stream:
        opening = stream.next_frame()
        assert opening.event == "ready"
        realtime.publish([user.id], "notification.created", {"n": 1})
        assert stream.events(1)[0].data == {"n": 1}

    # Anywhere else it authenticates nothing, in the query or as a bearer token.
    problem_body(client.get(f"/api/v1/me?token={token}"), 401)
    problem_body(client.get("/api/v1/me", headers=bearer(token)), 401)
    problem_body(client.get(STREAM, headers=bearer(token)), 401)
    problem_body(client.get(f"{STREAM}?token={token[:-2]}xx"), 401)

    # It never outlives the access token it was minted with: here, two seconds.
    short = create_access_token(identity=str(user.id), expires_delta=timedelta(seconds=2))
    response = client.post("/api/v1/events/token", headers=bearer(short))
    brief = response.get_json()
    assert brief["expires_in"] <= 2
    time.sleep(brief["expires_in"] + 1.1)
    body = problem_body(client.get(f"{STREAM}?token={brief['token']}"), 401)
    assert "expired" in body["detail"]


def test_a_stream_token_of_a_session_that_ended_is_refused(client: FlaskClient) -> None:
    user = make_user()
    pair = sessions.open_session(user, ip="127.0.0.1", user_agent="pytest")
    db.session.commit()
    response = client.post("/api/v1/events/token", headers=bearer(pair.access_token))
    token = response.get_json()["token"]
    with client_stream(client, f"{STREAM}?token={token}") as stream:
        assert stream.next_frame().event == "ready"

    sessions.end_session(user, pair.session_id)  # "sign out that device"
    body = problem_body(client.get(f"{STREAM}?token={token}"), 401)
    assert "revoked" in body["detail"]
    problem_body(client.get(STREAM, headers=bearer(pair.access_token)), 401)


def test_the_stream_has_its_own_rate_limit_and_uncacheable_headers(client: FlaskClient) -> None:
    response = client.get(STREAM, headers=auth_headers(make_user()), buffered=False)
    try:
        assert response.status_code == 200
        assert response.headers["RateLimit-Limit"] == "60"  # not the default 600/minute
        assert response.headers["Cache-Control"] == "no-cache, no-store"
        assert response.headers["X-Accel-Buffering"] == "no"
        assert response.headers["X-Request-ID"]
    finally:
        response.close()


# --- per-user caps and revocation while streaming ------------------------------------------


def app_client(private_stack: PrivateStacks, **changes: Any) -> FlaskClient:
    """A client of an app like the test run's, with some stream settings changed."""
    return private_stack(keep="all", **changes).client()


def test_a_user_keeps_only_so_many_streams_open(private_stack: PrivateStacks) -> None:
    client = app_client(private_stack, events_max_streams_per_user=2)
    user, other = make_user(), make_user()
    headers = auth_headers(user)
    with client_stream(client, headers=headers) as one, client_stream(client, headers=headers):
        assert one.next_frame().event == "ready"
        status, retry_after, body = _refusal(client, headers)
        assert status == 429 and body["type"].endswith("/too-many-streams"), body
        assert "2 event streams" in body["detail"] and retry_after > 0
        with client_stream(client, headers=auth_headers(other)) as theirs:  # their own count
            assert theirs.next_frame().event == "ready"
    # Both closed: their slots are free again at once.
    with client_stream(client, headers=headers) as again:
        assert again.next_frame().event == "ready"


def test_a_stream_left_behind_by_a_dead_process_stops_counting(
    private_stack: PrivateStacks,
) -> None:
    client = app_client(
        private_stack, events_max_streams_per_user=1, events_credential_check_seconds=0.2
    )
    headers = auth_headers(make_user())
    # Opened and then never served again, as when its process is SIGKILLed: nothing renews
    # its slot and nothing gives it back.
    orphan = client.get(STREAM, headers=headers, buffered=False)
    try:
        assert orphan.status_code == 200
        assert _refusal(client, headers)[0] == 429
        # Its slot runs out (three missed checks and some slack), then a new stream opens.
        deadline = time.monotonic() + 20
        while (status := _refusal(client, headers)[0]) == 429:
            assert time.monotonic() < deadline, "the dead stream's slot never ran out"
            time.sleep(0.5)  # well under the stream's own rate limit
        assert status == 200
    finally:
        orphan.close()


def _refusal(client: FlaskClient, headers: Mapping[str, str]) -> tuple[int, int, Any]:
    """(status, Retry-After or 0, problem body or None) of opening a stream, closed at once
    (a stream that opens is never read: it would not end)."""
    response = client.get(STREAM, headers=headers, buffered=False)
    try:
        if response.status_code == 200:
            return 200, 0, None
        body = problem_body(response, response.status_code)
        return response.status_code, int(response.headers.get("Retry-After", 0)), body
    finally:
        response.close()


def _until_the_stream_ends(stream: SSEReader, user_id: Any, what: str) -> None:
    """Keep the stream busy (an event every 20 ms) until it ends with a bare retry hint."""
    deadline = time.monotonic() + 20
    n = 0
    while True:
        n += 1
        realtime.publish([user_id], "notification.created", {"n": n})
        frame = stream.next_frame()
        if frame.retry is not None and frame.event is None:
            return
        assert time.monotonic() < deadline, f"a busy stream outlived {what}"
        time.sleep(0.02)


def test_a_busy_stream_ends_soon_after_its_session_is_signed_out(
    private_stack: PrivateStacks,
) -> None:
    # Heartbeats as in production (15 s): only the timer re-checks a stream never idle.
    client = app_client(private_stack, events_credential_check_seconds=0.3)
    user = make_user()
    pair = sessions.open_session(user, ip="127.0.0.1", user_agent="pytest")
    db.session.commit()
    with client_stream(client, headers=bearer(pair.access_token)) as stream:
        assert stream.next_frame().event == "ready"
        realtime.publish([user.id], "notification.created", {"n": 0})
        assert stream.events(1)[0].data == {"n": 0}
        sessions.end_session(user, pair.session_id)
        _until_the_stream_ends(stream, user.id, "its sign-out")


def test_a_password_reset_ends_streams_opened_with_any_token_of_the_account(
    private_stack: PrivateStacks,
) -> None:
    client = app_client(private_stack, events_credential_check_seconds=0.3)
    user = make_user()
    # A stream token from an access token of no session: only the reset's cutoff can end it.
    sessionless = bearer(create_access_token(identity=str(user.id)))
    token = client.post("/api/v1/events/token", headers=sessionless).get_json()["token"]
    with client_stream(client, f"{STREAM}?token={token}") as stream:
        assert stream.next_frame().event == "ready"
        reset = client.post(
            "/api/v1/auth/password/reset",
            json={"token": tokens.mint_password_reset(user), "password": "violet-otter-harbour-42"},
        )
        assert reset.status_code == 204, reset.get_data(as_text=True)
        _until_the_stream_ends(stream, user.id, "a password reset")
    assert "revoked" in problem_body(client.get(f"{STREAM}?token={token}"), 401)["detail"]
