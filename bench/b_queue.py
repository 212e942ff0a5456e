"""B3-B5: the task queue, through the real web, broker and prefork workers.

Everything runs on a private Redis broker (nothing else consumes or pollutes it) with
production settings; workers are the production entry point (`celery -A
make_celery:celery_app worker`, prefork, concurrency 2 on this 2-CPU machine) plus
`--include bench.noop`, the bare no-op baseline task.

* B3, queue latency: POST /api/v1/admin/jobs/ping (the `maintenance.ping` probe job, no
  sleep) through gunicorn; per job, from the moment the web process handed its message
  to the broker, right after the job's commit (the timestamp of Celery's `task-sent`
  event, which production sends for Flower), to the job's `started_at`, which the
  worker stamps when it claims the job (the task body starts right after). The notes
  also give the time from the client holding the 202 to `started_at`, which is mostly
  0 (the job runs before the response has reached the client). Idle: sequential
  requests, each waiting for its job to finish. Under load: the same probe
  every 50 ms while wrk (32 connections, as B1) POSTs export requests to the same
  gunicorn; their `exports.build` jobs queue on `exports`, which in production has its
  own pool (celeryconfig: one queue per kind of work), so the measured worker consumes
  every queue but that one and the backlog is dropped afterwards.
* B4, worker throughput: N messages published with no worker running, then a worker
  started and timed from the first message taken to the last one acknowledged (Redis
  polled every 2 ms), so publishing does not count. Baseline: `bench.noop`. Measured:
  `notifications.fan_out` for a one-member team audience (what an inventory low-stock
  alert is): claim, one notification row, live event, settle; email switched off. Two
  alternating rounds of each; the best of each counts (the notes give every run).
* B5, fan-out end to end: `notify_all_users` to 10,000 active users (bulk-inserted), of
  whom every 100th keeps the default immediate email for operator notices and the rest
  switched it off (in-app only): from the enqueue's commit to the last notification row
  and the last email job done (100 emails to an SMTP sink). Baseline: 10,000 individual
  `bench.noop.delay()` calls, from the first publish until the queue is drained.

`BENCH_QUEUE="b4"` (space-separated) runs only some of the three, while working on one.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
import redis as redis_lib
from flask_jwt_extended import create_access_token
from sqlalchemy import func, insert, select

from app import create_app
from bench import noop as baseline
from bench.harness import (
    LOGS,
    Context,
    Gunicorn,
    Row,
    private_broker,
    production_settings,
    say,
    wrk,
)
from celeryconfig import DEFAULT, EXPORTS, NOTIFICATIONS, QUEUES
from config import Settings
from extensions import celery_app, db
from models import Notification, NotificationPreference, User
from scripts.devservices import free_port
from services.identity import accounts
from services.jobs import queries as jobs
from services.messaging import notifications
from services.teams import teams
from tests.support import Mailbox, Worker, wait_for

CONCURRENCY = 2  # pool processes: one per CPU of this machine
IDLE_WARMUP = 20
IDLE_SAMPLES = 200
LOAD_SECONDS = 12
LOAD_CONNECTIONS = 32  # B1's
SAMPLE_INTERVAL = 0.05
B4_NOOPS = 4000
B4_JOBS = 800
B4_ROUNDS = 2
FANOUT_USERS = 10_000
EMAIL_EVERY = 100  # every 100th user keeps immediate email for operator notices
POLL = 0.002
# A big limit keeps the limiter's work in the path without refusing the benchmark's load.
RATE_LIMIT = "10000000/minute"


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


def run(ctx: Context) -> list[Row]:
    with private_broker(ctx.work) as broker:
        mailbox = Mailbox(free_port())
        mailbox.start()
        try:
            settings = production_settings(
                ctx.base, broker.url(0), ratelimit_default=RATE_LIMIT, smtp_url=mailbox.url
            )
            app = create_app(settings)
            with app.app_context(), psycopg.connect(ctx.libpq_url(), autocommit=True) as conn:
                bench = _Bench(settings, conn, broker.url(0), mailbox)
                parts = os.environ.get("BENCH_QUEUE", "b3 b4 b5").split()  # e.g. "b4" alone
                return [row for part in parts for row in getattr(bench, part)()]
        finally:
            mailbox.stop()


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


class _Bench:
    def __init__(
        self, settings: Settings, conn: psycopg.Connection[Any], broker_url: str, mailbox: Mailbox
    ) -> None:
        self.settings, self.conn, self.mailbox = settings, conn, mailbox
        self.broker = redis_lib.Redis.from_url(broker_url)
        self.admin = accounts.create_user("queue-admin@example.com", uuid.uuid4().hex, "Queue",
                                          is_admin=True)  # fmt: skip
        self.team_id = teams.create_team(self.admin, "Queue bench").team.id
        self.token = create_access_token(identity=str(self.admin.id))

    # --- B3 --------------------------------------------------------------------------------

    def b3(self) -> list[Row]:
        queues = [q for q in QUEUES if q != EXPORTS]
        worker = BenchWorker(self.settings, "b3", queues)
        with Gunicorn(self.settings, "queue-app") as web, SentEvents() as events:
            worker.start()
            try:
                client = ApiClient(web.port, self.token)
                say(f"B3 idle: {IDLE_SAMPLES} sequential pings ...")
                for _ in range(IDLE_WARMUP):
                    self._wait_finished(client.ping().job_id, worker)
                idle = []
                for _ in range(IDLE_SAMPLES):
                    sample = client.ping()
                    time.sleep(0.02)
                    self._wait_finished(sample.job_id, worker)
                    idle.append(sample)
                client.close()
                say(f"B3 under load: wrk -c{LOAD_CONNECTIONS} POST exports, {LOAD_SECONDS} s ...")
                loaded, load = self._sample_under_load(web)
                for sample in loaded:
                    self._wait_finished(sample.job_id, worker, timeout=120)
            finally:
                worker.stop()
        self._drop_export_backlog()
        idle_ms = self._latencies(idle, events.sent)
        load_ms = self._latencies(loaded, events.sent)
        return [
            Row("B3", "queue latency idle (job published -> task running), p50",
                percentile(idle_ms, 50), "ms", target="<= 5 ms",
                met=percentile(idle_ms, 50) <= 5,
                notes=f"{self._latency_notes(idle, idle_ms)}; "
                f"{events.stages([s.job_id for s in idle])}"),
            Row("B3", "queue latency under B1 load (published -> running), p99",
                percentile(load_ms, 99), "ms", target="<= 50 ms",
                met=percentile(load_ms, 99) <= 50,
                notes=f"load: wrk -c{LOAD_CONNECTIONS} POST /teams/<id>/exports, "
                f"{load.requests_per_second:,.0f} req/s, p99 {load.p99_ms:.1f} ms, "
                f"{load.errors} errors; {self._latency_notes(loaded, load_ms)}; "
                f"{events.stages([s.job_id for s in loaded])}"),
        ]  # fmt: skip

    def _sample_under_load(self, web: Gunicorn) -> tuple[list[Sample], Any]:
        samples: list[Sample] = []
        stop = threading.Event()

        def sampler() -> None:
            client = ApiClient(web.port, self.token)
            time.sleep(1)  # let wrk ramp up first
            while not stop.is_set():
                samples.append(client.ping())
                stop.wait(SAMPLE_INTERVAL)
            client.close()

        thread = threading.Thread(target=sampler, name="b3-sampler")
        thread.start()
        try:
            load = wrk(
                f"{web.url}/api/v1/teams/{self.team_id}/exports",
                connections=LOAD_CONNECTIONS, seconds=LOAD_SECONDS, method="POST",
                body=json.dumps({"resource": "analytics", "format": "csv"}),
                headers={"Authorization": f"Bearer {self.token}",
                         "Content-Type": "application/json"},
            )  # fmt: skip
        finally:
            stop.set()
            thread.join()
        return samples, load

    def _wait_finished(self, job_id: str, worker: Worker, timeout: float = 30) -> None:
        def finished() -> bool:
            row = self.conn.execute("SELECT status FROM jobs WHERE id = %s", (job_id,)).fetchone()
            return row is not None and row[0] == "succeeded"

        deadline = time.monotonic() + timeout
        while not finished():
            if time.monotonic() > deadline:
                raise RuntimeError(f"job {job_id} did not finish. {worker.describe()}")
            time.sleep(0.005)

    def _started(self, samples: Sequence[Sample]) -> dict[str, float]:
        rows = self.conn.execute(
            "SELECT id::text, extract(epoch FROM started_at)::float8 FROM jobs "
            "WHERE id = ANY(%s::uuid[])",
            ([s.job_id for s in samples],),
        ).fetchall()
        return dict(rows)

    def _latencies(self, samples: Sequence[Sample], published: dict[str, float]) -> list[float]:
        """Per sample: ms from its message's publication to the worker's claim."""
        missing = [s.job_id for s in samples if s.job_id not in published]
        if missing:
            raise RuntimeError(f"no task-sent event for {len(missing)} jobs, e.g. {missing[0]}")
        started = self._started(samples)
        return [(started[s.job_id] - published[s.job_id]) * 1000 for s in samples]

    def _latency_notes(self, samples: Sequence[Sample], latencies: Sequence[float]) -> str:
        started = self._started(samples)
        after_202 = [max(0.0, started[s.job_id] - s.received) * 1000 for s in samples]
        request = [(s.received - s.sent) * 1000 for s in samples]
        return (
            f"{len(samples)} samples; p50 {percentile(latencies, 50):.2f} ms, "
            f"p99 {percentile(latencies, 99):.2f} ms, max {max(latencies):.1f} ms; "
            f"202 -> running: p50 {percentile(after_202, 50):.2f} ms, "
            f"p99 {percentile(after_202, 99):.2f} ms "
            f"({sum(1 for v in after_202 if v == 0)} already running at the 202); "
            f"POST p50 {percentile(request, 50):.1f} ms"
        )

    def _drop_export_backlog(self) -> None:
        """The load's export jobs: their messages go, their rows are cancelled."""
        self.broker.delete(EXPORTS)
        self.conn.execute(
            "UPDATE jobs SET status = 'cancelled', finished_at = now() "
            "WHERE type = 'exports.build' AND status = 'queued' AND team_id = %s",
            (self.team_id,),
        )

    # --- B4 --------------------------------------------------------------------------------

    def b4(self) -> list[Row]:
        member = accounts.create_user("queue-member@example.com", uuid.uuid4().hex, "Member",
                                      is_admin=False)  # fmt: skip
        team_id = teams.create_team(member, "Queue B4").team.id
        db.session.add(NotificationPreference(user_id=member.id, category="inventory",
                                              channel="email", enabled=False))  # fmt: skip
        db.session.commit()
        # Alternating rounds, best of each: other load on the machine hits one run, rarely
        # all of them.
        noop_runs: list[float] = []
        job_runs: list[float] = []
        for round_ in range(B4_ROUNDS):
            say(f"B4 round {round_ + 1}: {B4_NOOPS:,} bench.noop messages, then a worker ...")
            with celery_app.producer_or_acquire() as producer:
                for _ in range(B4_NOOPS):
                    baseline.noop.apply_async(producer=producer)
            noop_runs.append(self._drain(DEFAULT, B4_NOOPS, "b4-noop"))
            say(f"B4 round {round_ + 1}: {B4_JOBS:,} one-recipient notification jobs ...")
            self._enqueue_b4_jobs(team_id, round_)
            job_runs.append(self._drain(NOTIFICATIONS, B4_JOBS, "b4-jobs"))
        written = db.session.scalar(select(func.count()).where(Notification.user_id == member.id))
        succeeded = self.conn.execute(
            "SELECT count(*) FROM jobs WHERE type = 'notifications.fan_out' "
            "AND team_id = %s AND status = 'succeeded'",
            (team_id,),
        ).fetchone()
        expected = B4_JOBS * B4_ROUNDS
        if written != expected or succeeded is None or succeeded[0] != expected:
            raise RuntimeError(f"B4: {written} notifications, {succeeded} jobs, not {expected}")
        noop_rate, job_rate = B4_NOOPS / min(noop_runs), B4_JOBS / min(job_runs)
        ratio = job_rate / noop_rate

        def rates(total: int, runs: list[float]) -> str:
            return ", ".join(f"{total / seconds:,.0f}" for seconds in runs)

        return [
            Row("B4", "worker throughput, one-notification job (notifications.fan_out)",
                job_rate, "tasks/s", baseline=noop_rate,
                baseline_what="bare Celery no-op, same broker and pool", ratio=ratio,
                target=">= 0.5x", met=ratio >= 0.5,
                notes=f"prefork concurrency {CONCURRENCY}; best of {B4_ROUNDS} alternating "
                f"rounds of {B4_JOBS} jobs ({rates(B4_JOBS, job_runs)} tasks/s) and "
                f"{B4_NOOPS} no-ops ({rates(B4_NOOPS, noop_runs)} tasks/s), each drained by "
                f"a freshly started worker from the first message taken to the last acked"),
        ]  # fmt: skip

    def _enqueue_b4_jobs(self, team_id: uuid.UUID, round_: int) -> None:
        """What an inventory low-stock alert does: notify the team (its one member)."""
        data = {"sku": "SKU-1", "name": "Widget", "quantity": 3, "threshold": 5,
                "team_id": str(team_id), "item_id": str(uuid.uuid4())}  # fmt: skip
        for i in range(B4_JOBS):
            notifications.notify_team(team_id, "inventory_low_stock", data,
                                      event_key=f"bench:b4:{round_}:{i}")  # fmt: skip
            if i % 100 == 99:
                db.session.commit()
        db.session.commit()

    def _drain(self, queue: str, total: int, name: str) -> float:
        """Start a worker on a queue holding `total` messages; seconds from the first
        message taken to the last one acknowledged."""
        if (waiting := int(self.broker.llen(queue))) != total:  # type: ignore[arg-type]
            raise RuntimeError(f"{queue} holds {waiting} messages, expected {total}")
        first: list[float] = []
        stop = threading.Event()

        def watch_first() -> None:
            while not stop.is_set():
                if int(self.broker.llen(queue)) < total:  # type: ignore[arg-type]
                    first.append(time.perf_counter())
                    return
                time.sleep(POLL)

        watcher = threading.Thread(target=watch_first, name="drain-first")
        watcher.start()
        worker = BenchWorker(self.settings, name, QUEUES)
        try:
            worker.start()
            end = self._drained(queue, timeout=300, describe=worker.describe)
        finally:
            stop.set()
            watcher.join()
            worker.stop()
        return end - first[0]

    def _drained(self, queue: str, timeout: float, describe: Callable[[], str]) -> float:
        """perf_counter() when `queue` is empty and nothing is unacknowledged (seen twice
        in a row: a message is briefly in neither between BRPOP and its unacked entry)."""
        deadline = time.monotonic() + timeout
        empty_since: float | None = None
        while True:
            now = time.perf_counter()
            pipe = self.broker.pipeline(transaction=False)
            pipe.llen(queue)
            pipe.hlen("unacked")
            waiting, unacked = pipe.execute()
            if waiting == 0 and unacked == 0:
                if empty_since is not None:
                    return empty_since
                empty_since = now
            else:
                empty_since = None
            if time.monotonic() > deadline:
                raise RuntimeError(f"{queue} not drained: {waiting} waiting, {unacked} unacked. "
                                   f"{describe()}")  # fmt: skip
            time.sleep(POLL)

    # --- B5 --------------------------------------------------------------------------------

    def b5(self) -> list[Row]:
        existing = db.session.scalar(select(func.count()).select_from(User)) or 0
        say(f"B5: seeding {FANOUT_USERS - existing:,} users ...")
        db.session.execute(
            insert(User),
            [{"id": uuid.uuid4(), "email": f"crowd{i}@example.com", "name": f"Crowd {i}"}
             for i in range(FANOUT_USERS - existing)],
        )  # fmt: skip
        everyone = list(db.session.scalars(select(User.id).order_by(User.id)))
        db.session.execute(
            insert(NotificationPreference),
            [{"user_id": uid, "category": "operations", "channel": "email", "enabled": False}
             for i, uid in enumerate(everyone) if i % EMAIL_EVERY != 0],
        )  # fmt: skip
        db.session.commit()
        emails = len(everyone[::EMAIL_EVERY])
        worker = BenchWorker(self.settings, "b5", QUEUES)
        worker.start()
        try:
            self._warm_up(worker)
            say(f"B5: notify_all_users to {len(everyone):,} users ...")
            fanout_seconds = self._fan_out(worker, emails)
            say(f"B5 baseline: {FANOUT_USERS:,} bench.noop.delay() ...")
            start = time.perf_counter()
            for _ in range(FANOUT_USERS):
                baseline.noop.delay()
            noop_seconds = self._drained(DEFAULT, 300, worker.describe) - start
        finally:
            worker.stop()
        ratio = noop_seconds / fanout_seconds
        return [
            Row("B5", f"fan-out of {len(everyone):,} notifications end to end", fanout_seconds,
                "s", baseline=noop_seconds,
                baseline_what=f"{FANOUT_USERS:,} individual .delay() no-ops", ratio=ratio,
                target=">= 5x faster", met=ratio >= 5,
                notes=f"ratio = baseline / fan-out; notify_all_users (operator_notice) from "
                f"commit to the last row and email job; {emails} users kept immediate email "
                f"(SMTP sink), the rest in-app only; concurrency {CONCURRENCY}"),
        ]  # fmt: skip

    def _warm_up(self, worker: Worker) -> None:
        job = jobs.start_ping(self.admin, sleep_seconds=0, fail_attempts=0)
        self._wait_finished(str(job.id), worker)
        for _ in range(20):
            baseline.noop.delay()
        self._drained(DEFAULT, 30, worker.describe)

    def _fan_out(self, worker: Worker, emails: int) -> float:
        start = time.time()
        job = notifications.notify_all_users(
            "operator_notice", {"title": "Maintenance tonight", "body": "Back by 02:00 UTC."},
            event_key="bench:b5",
        )  # fmt: skip
        db.session.commit()
        job_id = str(job.id)
        self._wait_finished(job_id, worker, timeout=300)

        def email_jobs() -> list[tuple[str, float | None]]:
            return [
                (status, finished)
                for status, finished in self.conn.execute(
                    "SELECT status, extract(epoch FROM finished_at)::float8 FROM jobs "
                    "WHERE type = 'notifications.send_emails' AND created_at >= to_timestamp(%s)",
                    (start,),
                ).fetchall()
            ]

        wait_for(lambda: all(status == "succeeded" for status, _ in email_jobs()), 300,
                 worker.describe)  # fmt: skip
        finished = [f for _, f in email_jobs() if f is not None]
        fan_out_end = self.conn.execute(
            "SELECT extract(epoch FROM finished_at)::float8 FROM jobs WHERE id = %s", (job_id,)
        ).fetchone()
        assert fan_out_end is not None
        end = max([fan_out_end[0], *finished])
        rows = db.session.scalar(select(func.count()).where(Notification.event_key == "bench:b5"))
        if rows != FANOUT_USERS:
            raise RuntimeError(f"B5 wrote {rows} notifications, expected {FANOUT_USERS}")
        wait_for(lambda: len(self.mailbox.messages) >= emails, 30,
                 lambda: f"{len(self.mailbox.messages)} of {emails} emails")  # fmt: skip
        return float(end - start)
