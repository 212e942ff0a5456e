"""Realtime events over Server-Sent Events: job progress live, resume, any web process.

In-process tests stream through the Flask test client (each read waits at most one
heartbeat). The cross-process tests start two real gunicorn servers on the test
database and Redis and read their streams over HTTP; every read has a socket timeout
and every wait a deadline, so a broken stream fails a test instead of hanging it.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from apiflask import APIFlask
from flask.testing import FlaskClient
from flask_jwt_extended import create_access_token

from config import Settings
from extensions import db, redis
from scripts.devservices import free_port
from services.core import tokens
from services.identity import sessions
from services.messaging import realtime
from tests.factories import auth_headers, make_user
from tests.support import PrivateStacks, WebServer, Worker, bearer, problem_body, wait_for

STREAM = "/api/v1/events/stream"


# --- reading Server-Sent Events ----------------------------------------------------------


@dataclass
class Frame:
    """One SSE block: an event (id, type, data), a comment, a retry hint, or several."""

    id: str | None = None
    event: str | None = None
    data: Any = None
    comments: list[str] = field(default_factory=list)
    retry: int | None = None


def parse_block(block: str) -> Frame:
    frame = Frame()
    for line in block.split("\n"):
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "":
            frame.comments.append(value)
        elif name == "id":
            frame.id = value
        elif name == "event":
            frame.event = value
        elif name == "data":
            frame.data = json.loads(value)
        elif name == "retry":
            frame.retry = int(value)
    return frame


def id_key(event_id: str | None) -> tuple[int, int]:
    assert event_id, "an event without an id"
    ms, seq = event_id.split("-")
    return int(ms), int(seq)


class SSEReader:
    """Frames from a stream of text chunks, each wait bounded by `deadline`."""

    def __init__(self, chunks: Callable[[], bytes | None]) -> None:
        self._chunks, self._buffer, self.ended = chunks, "", False

    def next_frame(self, timeout: float = 20) -> Frame:
        deadline = time.monotonic() + timeout
        while "\n\n" not in self._buffer:
            if time.monotonic() > deadline:
                raise AssertionError(f"no complete frame within {timeout}s: {self._buffer!r}")
            chunk = self._chunks()
            if chunk is None:
                self.ended = True
                raise AssertionError(f"the stream ended; unparsed: {self._buffer!r}")
            self._buffer += chunk.decode()
        block, self._buffer = self._buffer.split("\n\n", 1)
        return parse_block(block)

    def until(self, wanted: Callable[[Frame], bool], timeout: float = 30) -> list[Frame]:
        """Every frame up to and including the first `wanted` one."""
        deadline = time.monotonic() + timeout
        frames: list[Frame] = []
        while True:
            frames.append(self.next_frame(max(0.1, deadline - time.monotonic())))
            if wanted(frames[-1]):
                return frames

    def events(self, count: int, timeout: float = 20) -> list[Frame]:
        """The next `count` events, skipping keepalive comments."""
        deadline = time.monotonic() + timeout
        found: list[Frame] = []
        while len(found) < count:
            frame = self.next_frame(max(0.1, deadline - time.monotonic()))
            if frame.event is not None:
                found.append(frame)
        return found


@contextmanager
def client_stream(
    client: FlaskClient, url: str = STREAM, headers: Mapping[str, str] | None = None
) -> Iterator[SSEReader]:
    """A stream through the Flask test client (each read blocks at most one heartbeat)."""
    response = client.get(url, headers=dict(headers or {}), buffered=False)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "text/event-stream"
    chunks: Iterator[bytes] = iter(response.response)  # type: ignore[arg-type]
    try:
        yield SSEReader(lambda: next(chunks, None))
    finally:
        response.close()  # ends the generator and gives the stream slot back


# --- real web processes ------------------------------------------------------------------


class StreamServer(WebServer):
    """A web process with an SSE client over real HTTP."""

    @contextmanager
    def stream(
        self,
        path: str = STREAM,
        headers: Mapping[str, str] | None = None,
        read_timeout: float = 5,
        wait_for_slot: float = 0,
    ) -> Iterator[SSEReader]:
        """An SSE stream over real HTTP; a read waits at most `read_timeout` seconds.

        `wait_for_slot`: for that long, retry while the server says it is at capacity.
        """
        deadline = time.monotonic() + wait_for_slot
        while True:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=read_timeout)
            conn.request("GET", path, headers=dict(headers or {}))
            response = conn.getresponse()
            if response.status != 503 or time.monotonic() > deadline:
                break
            conn.close()
            time.sleep(0.1)
        try:
            assert response.status == 200, response.read()
            assert response.getheader("Content-Type", "").startswith("text/event-stream")
            yield SSEReader(lambda: response.read1(65536) or None)
        finally:
            conn.close()


WebPair = tuple["StreamServer", "StreamServer"]


@pytest.fixture(scope="module")
def web_pair(settings: Settings, app: APIFlask) -> Iterator[WebPair]:
    """Two web processes on the test database and Redis, with fast stream clocks.

    A lets one stream at a time, for three seconds (capacity and stream end); B is the
    ordinary one, except that its users may keep two streams open (wherever they are).
    Both heartbeat (and re-check credentials) every 0.2 s.
    """
    fast = {"events_heartbeat_seconds": 0.2}
    servers = (
        StreamServer(
            "a",
            settings.model_copy(
                update={**fast, "events_max_stream_seconds": 3, "events_max_streams_per_process": 1}
            ),
        ),
        StreamServer(
            "b",
            settings.model_copy(
                update={**fast, "events_max_stream_seconds": 60, "events_max_streams_per_user": 2}
            ),
        ),
    )
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.stop()


def start_ping(client: FlaskClient, headers: Mapping[str, str], **body: object) -> str:
    response = client.post("/api/v1/admin/jobs/ping", json=body, headers=headers)
    assert response.status_code == 202, response.get_json()
    job_id: str = response.get_json()["job"]["id"]
    return job_id


def finished(job_id: str) -> Callable[[Frame], bool]:
    return lambda f: f.event == "job.finished" and f.data["job_id"] == job_id


# --- job events through a stream ---------------------------------------------------------


def test_a_stream_delivers_a_jobs_progress_and_its_finish(
    client: FlaskClient, worker: Worker
) -> None:
    admin = make_user(admin=True)
    headers = auth_headers(admin)
    with client_stream(client, headers=headers) as stream:
        opening = stream.next_frame()
        assert opening.event == "ready" and opening.id and opening.retry
        job_id = start_ping(client, headers, sleep_seconds=1.5)
        frames = stream.until(finished(job_id), timeout=30)

    events = [f for f in frames if f.event]
    assert [id_key(f.id) for f in events] == sorted({id_key(f.id) for f in events})
    progress = [f.data for f in events if f.event == "job.progress"]
    assert {p["job_id"] for p in progress} == {job_id}
    assert all(p["type"] == "maintenance.ping" and p["status"] == "running" for p in progress)
    percents = [p["progress"] for p in progress]
    assert len(percents) >= 3 and percents == sorted(set(percents)), percents
    assert percents[-1] == 99  # the last report always goes out (stored as 99 until done)
    assert events[-1].data == {"job_id": job_id, "type": "maintenance.ping", "status": "succeeded"}


def test_a_retried_job_reports_retrying_then_its_outcome(
    client: FlaskClient, worker: Worker
) -> None:
    headers = auth_headers(make_user(admin=True))
    with client_stream(client, headers=headers) as stream:
        stream.next_frame()
        job_id = start_ping(client, headers, fail_attempts=1)
        frames = stream.until(finished(job_id), timeout=30)
    statuses = [f.data["status"] for f in frames if f.event]
    assert "retrying" in statuses
    assert statuses.index("retrying") < len(statuses) - 1
    assert statuses[-1] == "succeeded"


def test_jobs_of_other_users_are_not_streamed(client: FlaskClient, worker: Worker) -> None:
    admin_headers = auth_headers(make_user(admin=True))
    onlooker = make_user()
    with client_stream(client, headers=auth_headers(onlooker)) as stream:
        stream.next_frame()
        job_id = start_ping(client, admin_headers)
        realtime.publish([onlooker.id], "notification.created", {"id": "marker"})
        # The onlooker's next event is the marker, though the admin's job ran meanwhile.
        wait_for(lambda: _job_status(client, admin_headers, job_id) == "succeeded", 20)
        realtime.publish([onlooker.id], "notification.created", {"id": "after"})
        assert [f.data["id"] for f in stream.events(2)] == ["marker", "after"]


def _job_status(client: FlaskClient, headers: Mapping[str, str], job_id: str) -> str:
    status: str = client.get(f"/api/v1/jobs/{job_id}", headers=headers).get_json()["job"]["status"]
    return status


# --- resuming with Last-Event-ID -----------------------------------------------------------


def test_last_event_id_resumes_with_exactly_the_missed_events(client: FlaskClient) -> None:
    user = make_user()
    headers = auth_headers(user)
    for n in (1, 2, 3):
        realtime.publish([user.id], "notification.created", {"n": n})

    with client_stream(client, headers=headers) as stream:
        opening = stream.next_frame()  # a fresh connection starts from now: no replay
        realtime.publish([user.id], "notification.created", {"n": 4})
        assert [f.data["n"] for f in stream.events(1)] == [4]
    stored = realtime.read(user.id, "0", 0)
    assert [e.data["n"] for e in stored] == [1, 2, 3, 4]
    assert id_key(opening.id) == id_key(stored[2].id)

    resumed = {**headers, "Last-Event-ID": stored[0].id}
    with client_stream(client, headers=resumed) as stream:
        opening = stream.next_frame()
        assert (opening.event, opening.id) == ("ready", stored[0].id)
        assert [(f.id, f.data["n"]) for f in stream.events(3)] == [
            (e.id, e.data["n"]) for e in stored[1:]
        ]
        # Nothing else was pending: the next event is one published now.
        realtime.publish([user.id], "notification.created", {"n": 5})
        assert [f.data["n"] for f in stream.events(1)] == [5]

    # A new EventSource cannot send the header; the query parameter does the same.
    url = f"{STREAM}?last_event_id={urllib.parse.quote(stored[2].id)}"
    with client_stream(client, url, headers) as stream:
        assert stream.next_frame().event == "ready"
        assert [f.data["n"] for f in stream.events(2)] == [4, 5]


def test_an_id_older_than_what_is_kept_gets_reset_then_what_is_kept(
    client: FlaskClient,
) -> None:
    user = make_user()
    for n in (1, 2, 3):
        realtime.publish([user.id], "notification.created", {"n": n})
    stored = realtime.read(user.id, "0", 0)
    # What retention does to old entries on the next publish, done to the first two now.
    redis.client.xtrim(realtime.stream_key(user.id), minid=stored[2].id, approximate=False)

    resumed = {**auth_headers(user), "Last-Event-ID": stored[0].id}
    with client_stream(client, headers=resumed) as stream:
        opening = stream.next_frame()
        assert opening.event == "reset"  # event 2 is gone: the client must refetch
        assert [f.data["n"] for f in stream.events(1)] == [3]

    # The reset's id is where the replay started: reconnecting with it is no new reset.
    resumed["Last-Event-ID"] = opening.id or ""
    with client_stream(client, headers=resumed) as stream:
        assert stream.next_frame().event == "ready"
        assert [f.data["n"] for f in stream.events(1)] == [3]
    resumed["Last-Event-ID"] = stored[2].id
    with client_stream(client, headers=resumed) as stream:
        assert stream.next_frame().event == "ready"
        realtime.publish([user.id], "notification.created", {"n": 4})
        assert [f.data["n"] for f in stream.events(1)] == [4]

    resumed["Last-Event-ID"] = "not-an-id"
    with client_stream(client, headers=resumed) as stream:
        assert stream.next_frame().event == "reset"
        assert [f.data["n"] for f in stream.events(2)] == [3, 4]


def test_publish_serialises_like_the_api_and_never_raises(
    client: FlaskClient, settings: Settings, restore_globals: None
) -> None:
    user = make_user()
    realtime.publish([user.id, user.id, None], "notification.created", {"user": user.id,
                     "created_at": user.created_at})  # fmt: skip
    (event,) = realtime.read(user.id, "0", 0)  # one event: duplicates and None are dropped
    assert event.data == {
        "user": str(user.id),
        "created_at": user.created_at.isoformat().replace("+00:00", "Z"),
    }

    redis.configure(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    started = time.monotonic()
    realtime.publish([user.id], "notification.created", {"lost": True})  # logged, not raised
    assert time.monotonic() - started < 10


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


# --- several web processes ---------------------------------------------------------------


def test_any_web_process_streams_events_caused_through_another(
    web_pair: WebPair, worker: Worker
) -> None:
    a, b = web_pair
    admin = make_user(admin=True)
    headers = auth_headers(admin)
    status, _, minted = a.request("POST", "/api/v1/events/token", headers=headers)
    assert status == 200

    # The token minted by A opens a stream on B.
    with b.stream(f"{STREAM}?token={minted['token']}") as stream:
        assert stream.next_frame().event == "ready"
        # A accepts the job, the worker process runs it, B streams its events.
        status, _, body = a.request(
            "POST", "/api/v1/admin/jobs/ping", {"sleep_seconds": 0.5}, headers
        )
        assert status == 202, body
        frames = stream.until(finished(body["job"]["id"]), timeout=30)
        assert frames[-1].data["status"] == "succeeded"
        assert any(f.event == "job.progress" for f in frames)
        # And an event published by yet another process (this one).
        realtime.publish([admin.id], "notification.created", {"title": "Hello"})
        assert stream.events(1)[0].data == {"title": "Hello"}


def test_an_idle_stream_sends_heartbeats(
    web_pair: WebPair,
) -> None:
    _, b = web_pair
    with b.stream(headers=auth_headers(make_user())) as stream:
        assert stream.next_frame().event == "ready"
        started = time.monotonic()
        beats = [stream.next_frame(timeout=2) for _ in range(4)]
    assert all(f.comments == ["keepalive"] and f.event is None for f in beats)
    assert time.monotonic() - started < 3  # every 0.2 s here (15 s by default)


def test_streams_end_with_a_retry_hint_and_never_take_every_thread(
    web_pair: WebPair,
) -> None:
    a, _ = web_pair  # A: one stream at a time, three seconds each
    headers = auth_headers(make_user())
    with a.stream(headers=headers) as dropped:
        assert dropped.next_frame().event == "ready"
    # That client went away: the server notices at its next write and frees the slot.
    with a.stream(headers=headers, wait_for_slot=5) as stream:
        assert stream.next_frame().event == "ready"
        started = time.monotonic()
        # The slot is taken: another stream is refused, ordinary requests are served.
        status, answer_headers, body = a.request("GET", STREAM, headers=headers)
        assert status == 503 and body["type"].endswith("/stream-capacity")
        assert int(answer_headers["Retry-After"]) > 0
        assert a.request("GET", "/healthz", timeout=2)[0] == 200

        frames = stream.until(lambda f: f.retry is not None, timeout=10)
        assert 2.5 < time.monotonic() - started < 5
        assert frames[-1].event is None  # a bare retry hint: EventSource reconnects
        with pytest.raises(AssertionError, match="ended"):
            stream.next_frame(timeout=5)
    # The slot is free again once the server has closed the finished response.
    with a.stream(headers=headers, wait_for_slot=5) as again:
        assert again.next_frame().event == "ready"


def test_signing_out_ends_an_open_stream_within_a_heartbeat(
    web_pair: WebPair,
) -> None:
    _, b = web_pair
    user = make_user()
    pair = sessions.open_session(user, ip="127.0.0.1", user_agent="pytest")
    db.session.commit()
    with b.stream(headers=bearer(pair.access_token)) as stream:
        assert stream.next_frame().event == "ready"
        sessions.end_session(user, pair.session_id)
        started = time.monotonic()
        frames = stream.until(lambda f: f.retry is not None, timeout=5)
        assert time.monotonic() - started < 2  # heartbeats every 0.2 s here
        assert all(f.event is None for f in frames)
    # Reconnecting with the same credentials is refused.
    status, _, body = b.request("GET", STREAM, headers=bearer(pair.access_token))
    assert status == 401 and "revoked" in body["detail"]


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


def test_the_cap_counts_a_users_streams_on_every_web_process(
    web_pair: WebPair, client: FlaskClient
) -> None:
    _, b = web_pair  # B: two streams per user
    headers = auth_headers(make_user())
    with b.stream(headers=headers) as on_b, client_stream(client, headers=headers) as here:
        assert on_b.next_frame().event == "ready" and here.next_frame().event == "ready"
        status, answer_headers, body = b.request("GET", STREAM, headers=headers, timeout=5)
        assert status == 429 and body["type"].endswith("/too-many-streams"), body
        assert int(answer_headers["Retry-After"]) > 0


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
