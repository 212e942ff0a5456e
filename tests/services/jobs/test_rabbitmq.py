"""The job pipeline on RabbitMQ quorum queues: a vhost of each test's own on the machine's
RabbitMQ (tests/support/rabbitmq.py), real workers on it, and what the kernel reads from
the broker (queue depth, the lost-message mark, dead letters) working there as on Redis.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from functools import partial

import pytest

from integrations.broker_state import broker_state
from services.jobs.reaper import bury_dead_lettered
from services.jobs.relay import recover_lost_messages, relay_outbox
from tests.factories import auth_headers, make_user
from tests.ops.test_metrics import scrape, value
from tests.services.jobs.test_pipeline import pings_recorded, start_ping
from tests.support import PrivateStack, PrivateStacks, fetch_job, wait_for, wait_job
from tests.support.rabbitmq import RabbitVhost

pytestmark = pytest.mark.worker


@pytest.fixture
def rabbit(private_stack: PrivateStacks) -> PrivateStack:
    """An app whose Celery broker is a fresh RabbitMQ vhost (quorum queues by default)."""
    stack = private_stack(broker="rabbitmq")
    assert stack.rabbitmq is not None
    return stack


def queue_types(vhost: RabbitVhost) -> dict[str, str]:
    out = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "-p", vhost.name, "name", "type"],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    rows = [line.split("\t") for line in out.splitlines() if "\t" in line]
    return {name: kind for name, kind in rows if name != "name"}


def test_queue_depth_counts_the_messages_waiting_in_rabbitmq_quorum_queues(
    rabbit: PrivateStack,
) -> None:
    client = rabbit.client()
    headers = auth_headers(make_user(admin=True))
    for _ in range(5):
        start_ping(client, headers)  # no worker consumes this vhost: they wait

    samples = scrape(client)
    assert value(samples, "maycole_queue_depth", queue="default") == 5
    assert value(samples, "maycole_queue_depth", queue="exports") == 0
    assert all(s.value == 1 for s in samples if s.name == "maycole_metrics_source_up")
    assert rabbit.rabbitmq is not None
    assert queue_types(rabbit.rabbitmq)["default"] == "quorum"


def test_a_job_and_its_countdown_retry_run_on_rabbitmq(rabbit: PrivateStack) -> None:
    client = rabbit.client()
    headers = auth_headers(make_user(admin=True))
    with rabbit.worker("rabbit-worker") as worker:
        plain = start_ping(client, headers)
        # Fails its first attempt: the retry is sent with a countdown, which quorum queues
        # hold in RabbitMQ's native delay queues.
        retried = start_ping(client, headers, fail_attempts=1)
        assert wait_job(plain["id"], "succeeded", describe=worker.describe).attempts == 1
        done = wait_job(retried["id"], "succeeded", timeout=60, describe=worker.describe)
    assert done.attempts == 2
    assert pings_recorded(retried["id"]) == 1
    assert rabbit.rabbitmq is not None
    assert queue_types(rabbit.rabbitmq)["celery_delayed_0"] == "quorum"


def test_a_killed_workers_job_is_redelivered_by_rabbitmq_and_finishes_once(
    rabbit: PrivateStack,
) -> None:
    client = rabbit.client()
    headers = auth_headers(make_user(admin=True))
    with rabbit.worker("rabbit-sigkill-worker", concurrency=1) as worker:
        job = start_ping(client, headers, sleep_seconds=3)
        first_owner = wait_job(job["id"], "running", describe=worker.describe).worker
        assert first_owner is not None
        os.kill(int(first_owner.rpartition(":")[2]), signal.SIGKILL)
        done = wait_job(job["id"], "succeeded", timeout=60, describe=worker.describe)
    assert done.attempts == 2
    assert done.worker != first_owner
    assert pings_recorded(job["id"]) == 1


def test_a_job_accepted_while_rabbitmq_refuses_it_is_published_by_the_relay_later(
    rabbit: PrivateStack,
) -> None:
    client = rabbit.client()
    headers = auth_headers(make_user(admin=True))
    vhost = rabbit.rabbitmq
    assert vhost is not None
    vhost.delete()  # the broker refuses every connection to it now

    started = time.monotonic()
    job = start_ping(client, headers)  # asserts 202: accepted although the broker refused
    assert time.monotonic() - started < 3, "a broker outage must not hang the request"
    assert fetch_job(job["id"]).published_at is None  # still in the outbox
    assert relay_outbox() == 0  # still refused: nothing sent, nothing lost

    vhost.create()
    with rabbit.worker("rabbit-relay-worker") as worker:
        assert relay_outbox() == 1
        done = wait_job(job["id"], "succeeded", describe=worker.describe)
    assert done.attempts == 1
    assert pings_recorded(job["id"]) == 1
    assert relay_outbox() == 0


def test_jobs_a_rabbitmq_that_lost_its_data_lost_are_sent_again(
    rabbit: PrivateStack,
) -> None:
    client = rabbit.client()
    headers = auth_headers(make_user(admin=True))
    assert relay_outbox() == 0  # the relay has seen this broker: its probe message is there
    assert recover_lost_messages() == 0
    job = start_ping(client, headers)
    wait_for(lambda: fetch_job(job["id"]).published_at, timeout=2)

    vhost = rabbit.rabbitmq
    assert vhost is not None
    vhost.delete()  # the broker's data is gone: queues, messages and the mark
    vhost.create()
    with rabbit.worker("rabbit-loss-worker") as worker:
        assert relay_outbox() == 1  # the lost job, and only it, is sent again
        done = wait_job(job["id"], "succeeded", describe=worker.describe)
        assert relay_outbox() == 0  # marked again: nothing more to send
    assert done.attempts == 1
    assert pings_recorded(job["id"]) == 1


def test_a_job_that_keeps_killing_its_worker_becomes_a_dead_letter_at_the_delivery_limit(
    private_stack: PrivateStacks,
) -> None:
    # A poison job: each delivery kills the worker process running it; RabbitMQ puts the
    # message back each time, until its delivery limit dead-letters it.
    stack = private_stack(broker="rabbitmq", broker_delivery_limit=1, task_max_attempts=5)
    headers = auth_headers(make_user(admin=True))
    with stack.worker("rabbit-poison-worker", concurrency=1) as worker:
        job = start_ping(stack.client(), headers, sleep_seconds=30)
        for attempt in (1, 2):
            running = wait_for(partial(_running, job["id"], attempt), 30, worker.describe)
            assert running is not None
            os.kill(int(running.rpartition(":")[2]), signal.SIGKILL)
        assert wait_for(bury_dead_lettered, timeout=30, describe=worker.describe) == 1
    dead = fetch_job(job["id"])
    assert dead.status == "dead"
    assert dead.attempts == 2
    assert dead.error is not None and "dead-lettered" in dead.error
    assert bury_dead_lettered() == 0  # taken off the broker once recorded
    assert pings_recorded(job["id"]) == 0


def _running(job_id: str, attempt: int) -> str | None:
    """The worker running this attempt of the job, once it runs."""
    job = fetch_job(job_id)
    return job.worker if job.status == "running" and job.attempts == attempt else None


def test_broker_state_reads_nothing_from_a_vhost_without_our_queues(rabbit: PrivateStack) -> None:
    state = broker_state()
    assert state is not None
    assert state.depths(["default", "payments"]) == {"default": 0, "payments": 0}
    assert state.has_mark() is False  # a passive read never creates the mark
    state.set_mark()
    state.set_mark()
    assert state.has_mark() is True
