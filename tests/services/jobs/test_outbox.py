"""The outbox's publish path: a request pays for its own transaction and the broker's
publish, nothing more; sent rows are marked published in batches off its thread, and a
row whose message was sent is not sent again while it waits in its queue.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis as redis_lib
from flask import current_app
from flask.testing import FlaskClient
from sqlalchemy import event, update

from extensions import db
from models import Job
from scripts.devservices import RedisServer
from services.jobs import names
from services.jobs.context import JobContext
from services.jobs.outbox import enqueue, flush_marks
from services.jobs.relay import relay_outbox
from services.jobs.runner import run_job
from tests.factories import auth_headers, make_user
from tests.services.jobs.test_pipeline import start_ping
from tests.support import PrivateStacks, fetch_job, wait_for


@pytest.fixture
def broker(private_stack: PrivateStacks) -> Iterator[redis_lib.Redis]:
    """A broker of our own that no worker consumes: every message sent stays countable."""
    stack = private_stack(broker=True)
    server: RedisServer | None = stack.broker
    assert server is not None
    yield redis_lib.Redis.from_url(server.url(0))


@contextmanager
def statements() -> Iterator[list[tuple[int, str]]]:
    """(thread id, statement) of everything the app's engine runs meanwhile, BEGIN included."""
    seen: list[tuple[int, str]] = []

    def executed(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append((threading.get_ident(), " ".join(statement.split())))

    def began(_conn: Any) -> None:
        seen.append((threading.get_ident(), "BEGIN"))

    event.listen(db.engine, "before_cursor_execute", executed)
    event.listen(db.engine, "begin", began)
    try:
        yield seen
    finally:
        event.remove(db.engine, "before_cursor_execute", executed)
        event.remove(db.engine, "begin", began)


def backdate(job_id: Any) -> None:
    """As if the job had waited in a long queue, far past RELAY_MIN_AGE_SECONDS."""
    long_ago = datetime.now(UTC) - timedelta(minutes=2)
    db.session.execute(update(Job).where(Job.id == job_id).values(run_after=long_ago))
    db.session.commit()


def test_a_job_accepted_over_http_is_marked_published_soon_without_a_request_side_update(
    client: FlaskClient, broker: redis_lib.Redis
) -> None:
    headers = auth_headers(make_user(admin=True))
    relay_outbox()  # the relay has seen this broker (its mark set), so it only sends
    request_thread = threading.get_ident()
    with statements() as seen:
        job = start_ping(client, headers)
        mine = [s for thread, s in seen if thread == request_thread]
        assert mine.count("BEGIN") == 1, mine  # the request's own transaction, no second
        assert not [s for s in mine if s.startswith("UPDATE jobs")], mine
        # Marked by the process's marker thread within a second (every 0.2 s here).
        marked = wait_for(lambda: fetch_job(job["id"]).published_at, timeout=1)
    assert marked is not None
    assert any(t != request_thread and s.startswith("UPDATE jobs") for t, s in seen)
    assert broker.llen("default") == 1

    backdate(job["id"])  # still waiting behind other messages, long after its commit
    assert relay_outbox() == 0  # sent and marked: the relay leaves it alone
    assert relay_outbox() == 0
    assert broker.llen("default") == 1  # no duplicate piled onto the queue


def test_many_sends_are_marked_in_a_few_statements(
    broker: redis_lib.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    relay_outbox()
    # An interval far longer than twenty commits take, so the count does not depend on the
    # machine's speed: one mark for all of them (plus, at most, one already under way).
    slow = current_app.config["SETTINGS"].model_copy(update={"outbox_mark_interval_seconds": 3.0})
    monkeypatch.setitem(current_app.config, "SETTINGS", slow)
    with statements() as seen:
        jobs = []
        for _ in range(20):  # twenty requests' worth of commits in quick succession
            jobs.append(enqueue(names.MAINTENANCE_PING, args={"sleep_seconds": 0}))
            db.session.commit()
        # Marked by the marker thread's own flush, not by one of ours.
        wait_for(lambda: all(fetch_job(job.id).published_at for job in jobs), timeout=6)
    marks = [s for _, s in seen if s.startswith("UPDATE jobs SET published_at")]
    assert 1 <= len(marks) <= 2, marks  # one per commit would be twenty
    assert broker.llen("default") == 20


def sent_with_its_mark_lost() -> Job:
    """A job published and then unmarked, as if its process died before the marker ran."""
    relay_outbox()
    job = enqueue(names.MAINTENANCE_PING, args={"sleep_seconds": 0})
    db.session.commit()
    flush_marks()
    db.session.execute(update(Job).where(Job.id == job.id).values(published_at=None))
    db.session.commit()
    return job


def test_a_sent_job_whose_mark_was_lost_is_sent_once_more_then_left_alone(
    broker: redis_lib.Redis,
) -> None:
    # The process crashed after publishing, before its marker flushed: the relay cannot
    # know the message exists, so it sends it again, once, and marks it.
    job = sent_with_its_mark_lost()
    backdate(job.id)
    assert relay_outbox() == 1
    assert fetch_job(job.id).published_at is not None
    assert relay_outbox() == 0  # not again on every pass while it waits in the queue
    assert broker.llen("default") == 2  # the duplicate, which the claim will skip


def test_the_claim_marks_a_delivered_job_published(broker: redis_lib.Redis) -> None:
    # A worker can take the job before the marker's UPDATE lands (or the mark is lost):
    # the claim marks it, so the relay never needs to send a running job's message again.
    job = sent_with_its_mark_lost()
    ran: list[uuid.UUID] = []

    def body(ctx: JobContext) -> None:
        ran.append(ctx.job_id)

    run_job(body, str(job.id))
    done = fetch_job(job.id)
    assert ran == [job.id] and done.status == "succeeded"
    assert done.published_at is not None
