"""Event streams across real web processes: two gunicorn servers on the test database and
Redis, read over HTTP with socket timeouts (heartbeats, retry hints, caps, sign-out).
"""

from __future__ import annotations

import http.client
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import pytest
from apiflask import APIFlask
from flask.testing import FlaskClient

from config import Settings
from extensions import db
from services.identity import sessions
from services.messaging import realtime
from tests.blueprints.events.sse import STREAM, SSEReader, client_stream, finished
from tests.factories import auth_headers, make_user
from tests.support import WebServer, Worker, bearer

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
