"""Realtime events over Server-Sent Events: job progress live, resume with Last-Event-ID.

In-process tests stream through the Flask test client (each read waits at most one
heartbeat); every wait has a deadline, so a broken stream fails a test instead of hanging it.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Mapping

from flask.testing import FlaskClient

from config import Settings
from extensions import redis
from scripts.devservices import free_port
from services.messaging import realtime
from tests.blueprints.events.sse import STREAM, client_stream, finished
from tests.factories import auth_headers, make_user
from tests.support import Worker, wait_for


def id_key(event_id: str | None) -> tuple[int, int]:
    assert event_id, "an event without an id"
    ms, seq = event_id.split("-")
    return int(ms), int(seq)


def start_ping(client: FlaskClient, headers: Mapping[str, str], **body: object) -> str:
    response = client.post("/api/v1/admin/jobs/ping", json=body, headers=headers)
    assert response.status_code == 202, response.get_json()
    job_id: str = response.get_json()["job"]["id"]
    return job_id


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
