"""The queue benchmarks' instruments (bench/b_queue.py): Celery's own events on the broker,
a worker with the no-op baseline task, a keep-alive API client, the nearest-rank
percentile, and `QueueBench`, the state every group shares (settings, the admin and their
team, the broker, a direct database connection).
"""

from __future__ import annotations

import http.client
import json
import math
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
import redis as redis_lib
from flask_jwt_extended import create_access_token

from bench import noop as baseline
from bench.harness import LOGS
from config import Settings
from extensions import celery_app
from services.identity import accounts
from services.teams import teams
from tests.support import Mailbox, Worker, wait_for

CONCURRENCY = 2  # pool processes: one per CPU of this machine


class SentEvents:
    """Celery's `task-sent` events on the broker: when each message was published."""

    def __init__(self) -> None:
        self.sent: dict[str, float] = {}  # task id (= job id) -> epoch seconds
        # The worker's own events, for the notes: message taken; a pool process accepted
        # it (`task-started`, sent by the parent once the child reports it started).
        self.received: dict[str, float] = {}
        self.started: dict[str, float] = {}
        self._connection = celery_app.connection_for_read()
        handlers = {"task-sent": self._on_sent, "task-received": self._on_received,
                    "task-started": self._on_started}  # fmt: skip
        self._receiver = celery_app.events.Receiver(self._connection, handlers=handlers)
        self._thread = threading.Thread(target=self._capture, name="task-sent", daemon=True)

    def _on_sent(self, event: dict[str, Any]) -> None:
        self.sent[event["uuid"]] = float(event["timestamp"])

    def _on_received(self, event: dict[str, Any]) -> None:
        self.received[event["uuid"]] = float(event["timestamp"])

    def _on_started(self, event: dict[str, Any]) -> None:
        self.started[event["uuid"]] = float(event["timestamp"])

    def stages(self, job_ids: Sequence[str]) -> str:
        """Median ms of publish -> taken by the worker -> accepted by a pool process."""
        pairs = [(self.sent[j], self.received[j], self.started[j]) for j in job_ids
                 if j in self.sent and j in self.received and j in self.started]  # fmt: skip
        if not pairs:
            return "no worker events"
        taken = percentile([(r - s) * 1000 for s, r, _ in pairs], 50)
        started = percentile([(t - r) * 1000 for _, r, t in pairs], 50)
        return f"medians: published -> taken {taken:.2f} ms -> pool accepted {started:.2f} ms"

    def _capture(self) -> None:
        self._receiver.capture(limit=None, timeout=None, wakeup=False)

    def __enter__(self) -> SentEvents:
        self._thread.start()

        def subscribed() -> bool:  # fanout events are not queued: probe until one arrives
            probe = baseline.noop.delay().id
            time.sleep(0.1)
            return probe in self.sent

        wait_for(subscribed, 30, lambda: "no task-sent event arrived")
        return self

    def __exit__(self, *exc: object) -> None:
        self._receiver.should_stop = True
        self._thread.join(10)
        self._connection.release()


class BenchWorker(Worker):
    """tests.support.Worker on chosen queues, with the no-op baseline task included."""

    def __init__(self, settings: Settings, name: str, queues: Sequence[str]) -> None:
        super().__init__(settings, LOGS / f"worker-queue-{name}.log", CONCURRENCY)
        self.queues = queues

    def start(self, timeout: float = 60) -> None:
        import subprocess
        import sys

        from tests.support import ROOT, settings_env

        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        command = [
            sys.executable, "-m", "celery", "-A", "make_celery:celery_app", "worker",
            "--include", "bench.noop", "-Q", ",".join(self.queues),
            f"--concurrency={self.concurrency}", "--pool=prefork", "--loglevel=INFO",
            "--events", "--without-gossip", "--without-mingle", "-n", f"bench-{id(self)}@%h",
        ]  # fmt: skip
        self.process = subprocess.Popen(  # noqa: S603 - our own command line
            command, cwd=ROOT, env=settings_env(self.settings),
            stdout=self.log_path.open("ab"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_for(lambda: b"ready." in self._log_since(offset), timeout, self.describe)


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass(frozen=True)
class Sample:
    job_id: str
    sent: float  # epoch seconds: request written
    received: float  # epoch seconds: 202 read


class ApiClient:
    """One keep-alive connection to gunicorn, posting as one user."""

    def __init__(self, port: int, token: str) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def ping(self) -> Sample:
        payload = json.dumps({"sleep_seconds": 0})
        sent = time.time()
        self.connection.request("POST", "/api/v1/admin/jobs/ping", payload, self.headers)
        response = self.connection.getresponse()
        raw = response.read()
        received = time.time()
        if response.status != 202:
            raise RuntimeError(f"ping: {response.status} {raw[:300]!r}")
        return Sample(json.loads(raw)["job"]["id"], sent, received)

    def close(self) -> None:
        self.connection.close()


class QueueBench:
    """What every group measures with: the run's settings, a direct connection, the
    broker, an admin (with a token) and their team."""

    def __init__(
        self, settings: Settings, conn: psycopg.Connection[Any], broker_url: str, mailbox: Mailbox
    ) -> None:
        self.settings, self.conn, self.mailbox = settings, conn, mailbox
        self.broker = redis_lib.Redis.from_url(broker_url)
        self.admin = accounts.create_user("queue-admin@example.com", uuid.uuid4().hex, "Queue",
                                          is_admin=True)  # fmt: skip
        self.team_id = teams.create_team(self.admin, "Queue bench").team.id
        self.token = create_access_token(identity=str(self.admin.id))

    def _wait_finished(self, job_id: str, worker: Worker, timeout: float = 30) -> None:
        def finished() -> bool:
            row = self.conn.execute("SELECT status FROM jobs WHERE id = %s", (job_id,)).fetchone()
            return row is not None and row[0] == "succeeded"

        deadline = time.monotonic() + timeout
        while not finished():
            if time.monotonic() > deadline:
                raise RuntimeError(f"job {job_id} did not finish. {worker.describe()}")
            time.sleep(0.005)
