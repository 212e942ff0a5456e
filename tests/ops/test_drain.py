"""Deploys: SIGTERM drains workers within the grace period and web workers finish requests.

The worker tests use their own throwaway Redis as the broker, so the session's worker
cannot take their jobs, and start (and signal) their own workers.
"""

from __future__ import annotations

import http.client
import json
import signal
import socket
import time

import psutil
import pytest
from flask.testing import FlaskClient

from config import Settings
from tests.factories import PASSWORD, auth_headers, make_user
from tests.services.jobs.test_pipeline import pings_recorded, start_ping
from tests.support import (
    LOGS,
    PrivateStacks,
    WebServer,
    Worker,
    fetch_job,
    running_worker,
    wait_for,
    wait_job,
)

pytestmark = pytest.mark.worker


def _terminate(worker: Worker, timeout: float) -> tuple[int, float]:
    """SIGTERM the worker's main process; (exit code, seconds it took to exit)."""
    assert worker.process is not None
    began = time.monotonic()
    worker.process.send_signal(signal.SIGTERM)
    code = worker.process.wait(timeout=timeout)
    return code, time.monotonic() - began


def test_sigterm_lets_the_running_job_finish_and_exits_within_the_grace_period(
    client: FlaskClient, private_stack: PrivateStacks
) -> None:
    grace = 15.0
    settings = private_stack(broker=True, worker_shutdown_grace_seconds=grace).settings
    headers = auth_headers(make_user(admin=True))
    worker = Worker(settings, LOGS / "drain-worker.log", concurrency=1)
    worker.start()
    try:
        job = start_ping(client, headers, sleep_seconds=2)
        wait_job(job["id"], "running", describe=worker.describe)
        code, took = _terminate(worker, timeout=grace + 15)
        log = worker.describe()
    finally:
        worker.stop()
    assert code == 0, log
    assert took < grace, f"drained in {took:.1f} s, grace {grace} s"
    assert "worker_grace_expired" not in log
    done = fetch_job(job["id"])  # finished before the worker exited
    assert done.status == "succeeded" and done.attempts == 1
    assert pings_recorded(job["id"]) == 1


def test_a_job_outliving_the_grace_period_goes_back_to_the_queue_and_runs_once(
    client: FlaskClient, private_stack: PrivateStacks
) -> None:
    grace = 1.0
    settings = private_stack(broker=True, worker_shutdown_grace_seconds=grace).settings
    headers = auth_headers(make_user(admin=True))
    worker = Worker(settings, LOGS / "drain-cut-worker.log", concurrency=1)
    worker.start()
    try:
        job = start_ping(client, headers, sleep_seconds=4)
        first_owner = wait_job(job["id"], "running", describe=worker.describe).worker
        _code, took = _terminate(worker, timeout=grace + 20)
        log = worker.describe()
    finally:
        worker.stop()
    assert took < grace + 10, f"exited {took:.1f} s after SIGTERM, grace {grace} s"
    assert "worker_grace_expired" in log
    cut = fetch_job(job["id"])
    assert cut.status == "running" and cut.attempts == 1  # cut off mid-run, not finished
    assert pings_recorded(job["id"]) == 0

    # The message went back to the queue (nothing re-publishes it: no beat, no reaper here).
    with running_worker(settings, LOGS / "drain-next-worker.log", concurrency=1) as successor:
        done = wait_job(job["id"], "succeeded", timeout=60, describe=successor.describe)
    assert done.attempts == 2 and done.worker != first_owner
    assert pings_recorded(job["id"]) == 1  # its effect happened exactly once


def test_gunicorn_finishes_in_flight_requests_after_sigterm_within_the_grace(
    settings: Settings, app: object
) -> None:
    grace = 3
    user = make_user()
    body = json.dumps({"email": user.email, "password": PASSWORD}).encode()
    head = (
        "POST /api/v1/auth/login HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    server = WebServer("drain", settings.model_copy(update={"web_shutdown_grace_seconds": grace}))
    server.start()
    try:
        assert server.process is not None
        (web_worker,) = psutil.Process(server.process.pid).children()
        # Two requests in flight: a web worker thread is inside each, waiting for the
        # rest of its body. One client will send it; the other never will.
        finishing, stalled = (
            socket.create_connection(("127.0.0.1", server.port), timeout=20) for _ in range(2)
        )
        for sock in (finishing, stalled):
            sock.sendall(head + body[: len(body) // 2])
        ports = {finishing.getsockname()[1], stalled.getsockname()[1]}
        wait_for(
            lambda: ports <= {c.raddr.port for c in web_worker.net_connections() if c.raddr},
            describe=server.describe,
        )

        seen = server.log_path.stat().st_size
        server.process.send_signal(signal.SIGTERM)  # a deploy stops the master
        stopping = time.monotonic()
        wait_for(lambda: b"Handling signal: term" in server.log_path.read_bytes()[seen:])
        time.sleep(1)  # the worker is shutting down meanwhile; the request must survive it
        assert web_worker.is_running() and server.process.poll() is None

        finishing.sendall(body[len(body) // 2 :])
        response = http.client.HTTPResponse(finishing)
        response.begin()
        answer = json.loads(response.read())
        assert response.status == 200, answer
        assert answer["access_token"]

        # The stalled one holds the worker until the grace period is over, not longer.
        assert server.process.wait(timeout=grace + 15) == 0
        took = time.monotonic() - stopping
        assert grace - 0.5 < took < grace + 5, f"stopped {took:.1f} s after SIGTERM"
        try:
            cut = stalled.recv(1024)
        except ConnectionResetError:
            cut = b""
        assert cut == b"", cut  # closed unanswered
    finally:
        for sock in (finishing, stalled):
            sock.close()
        server.stop()
