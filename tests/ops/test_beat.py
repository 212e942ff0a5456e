"""Two beats at once (a deploy overlap, a standby): one sends, the other stands by and takes
over, and whichever sends, each period of a scheduled job is sent once.

The failover tests run real beat and worker processes on a probe entry whose period is a
few seconds (tests/support/beat_probe_app.py) and SIGKILL the leader at a period's start:
just after it sent the period, or while its claim of the period is still uncommitted. The
standby takes over within the (shortened) lease and sends every later period; the probe's
runs prove each period ran exactly once. On the old scheduler (last runs in a shelve file
per host) the standby sent again the period its predecessor had just sent.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib
from sqlalchemy import create_engine, select, text

from config import Settings
from extensions import db
from models import BeatEntry, Job
from services.jobs.metrics import BEAT_LAST_TICK_KEY
from services.jobs.schedule import BEAT_ARG
from tasks.runtime.beat_scheduler import LEADER_KEY
from tests.support import LOGS, ROOT, PrivateStacks, Worker, settings_env, wait_for
from tests.support.beat_probe import APP, PERIOD_SECONDS, PROBE_ENTRY, PROBE_TASK, RUNS_KEY

# A period's start in a beat's log line (JSON or console rendering).
PERIOD = re.compile(r"\bperiod\W+(\d{4}-[\d:T.+-]+)")


def start_beat(
    settings: Settings, tmp_path: Path, name: str, app: str = "make_celery:celery_app"
) -> subprocess.Popen[bytes]:
    log = (tmp_path / f"{name}.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", app, "beat", "--loglevel=INFO"],
        cwd=ROOT, env=settings_env(settings) | {"PYTHONUNBUFFERED": "1"},
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip


def stop(*processes: subprocess.Popen[bytes] | None) -> None:
    for process in processes:
        if process and process.poll() is None:
            process.kill()
            process.wait()


def test_only_one_beat_leads_and_a_clean_exit_hands_over_at_once(
    private_stack: PrivateStacks, tmp_path: Path
) -> None:
    # Broker and lease store of their own: these beats must not feed the session worker.
    private_redis = private_stack.redis()
    beat_settings = private_stack(
        keep="all", redis_url=private_redis.url(0), celery_broker_url=private_redis.url(1)
    ).settings
    client = redis_lib.Redis.from_url(private_redis.url(0), decode_responses=True)

    def get(key: str) -> str:
        return str(client.get(key) or "")

    first = start_beat(beat_settings, tmp_path, "first")
    second: subprocess.Popen[bytes] | None = None
    try:
        leader = wait_for(lambda: get(LEADER_KEY), 30, lambda: "no beat took the lease")
        assert f":{first.pid}:" in leader
        second = start_beat(beat_settings, tmp_path, "second")
        standby_log = tmp_path / "second.log"
        wait_for(lambda: b"beat_standby" in standby_log.read_bytes(), 30)
        ticked = float(wait_for(lambda: get(BEAT_LAST_TICK_KEY), 10))
        wait_for(lambda: float(get(BEAT_LAST_TICK_KEY) or 0) > ticked, 20)
        assert f":{first.pid}:" in get(LEADER_KEY)  # the second only waits

        first.send_signal(signal.SIGTERM)
        first.wait(20)
        # The lease was released, not left to expire: the standby leads well before TTL.
        standby_pid = second.pid
        wait_for(
            lambda: f":{standby_pid}:" in get(LEADER_KEY), beat_settings.beat_lease_seconds / 3
        )
        # Every scheduled job entry is on the shared schedule, known to both beats.
        db.session.rollback()
        names = set(db.session.scalars(select(BeatEntry.name)))
        assert {"reports-daily", "payments-reconcile", "analytics-aggregate"} <= names
        assert "jobs-relay" not in names  # housekeeping stays in the leader's memory
    finally:
        stop(first, second)
        client.close()


class Failover:
    """Two beats on the probe schedule, a worker running the probe jobs, and what ran."""

    def __init__(self, private_stack: PrivateStacks, tmp_path: Path) -> None:
        server = private_stack.redis()
        # A lease of 2 s: the standby takes over well within one probe period (5 s).
        self.settings = private_stack(
            keep="all", redis_url=server.url(0), celery_broker_url=server.url(1),
            beat_lease_seconds=2.0, beat_standby_retry_seconds=0.5,
        ).settings  # fmt: skip
        self.tmp_path = tmp_path
        self.redis = redis_lib.Redis.from_url(server.url(0), decode_responses=True)
        self.worker = Worker(self.settings, LOGS / "beat-failover-worker.log", app=APP)
        self.leader: subprocess.Popen[bytes] | None = None
        self.standby: subprocess.Popen[bytes] | None = None

    @contextmanager
    def running(self) -> Iterator[Failover]:
        self.worker.start(60)
        try:
            self.leader = start_beat(self.settings, self.tmp_path, "leader", APP)
            wait_for(lambda: f":{self.leader_pid}:" in self.lease(), 30, self.describe)
            self.standby = start_beat(self.settings, self.tmp_path, "standby", APP)
            wait_for(lambda: "beat_standby" in self.log("standby"), 30, self.describe)
            yield self
        finally:
            stop(self.leader, self.standby)
            self.worker.stop()
            self.redis.close()

    @property
    def leader_pid(self) -> int:
        assert self.leader is not None
        return self.leader.pid

    def lease(self) -> str:
        return str(self.redis.get(LEADER_KEY) or "")

    def log(self, name: str) -> str:
        return (self.tmp_path / f"{name}.log").read_text(errors="replace")

    def sent(self, name: str) -> list[str]:
        """The probe periods beat `name` logged as sent, in order."""
        lines = self.log(name).splitlines()
        found = (
            PERIOD.search(line) for line in lines if "beat_sent" in line and PROBE_ENTRY in line
        )
        return [match.group(1) for match in found if match]

    def describe(self) -> str:
        return (
            "\n".join(f"--- {name}.log\n{self.log(name)[-3000:]}" for name in ("leader", "standby"))
            + f"\n{self.worker.describe()}"
        )

    def kill_leader(self) -> None:
        assert self.leader is not None
        self.leader.send_signal(signal.SIGKILL)
        self.leader.wait(10)

    def runs(self) -> Counter[str]:
        """How often the probe ran for each period."""
        runs: list[str] = self.redis.lrange(RUNS_KEY, 0, -1)  # type: ignore[assignment]
        return Counter(json.loads(run)["period"] for run in runs)

    def assert_each_period_ran_once(self, killed: str, sent_by: str) -> None:
        """Every period from the first sent to the last ran exactly once, as one job: the
        killed one (sent by `sent_by` only) and the standby's after it."""
        wait_for(lambda: len(self.sent("standby")) >= 2, 30, self.describe)
        assert self.standby is not None
        self.standby.send_signal(signal.SIGTERM)
        self.standby.wait(20)
        assert [name for name in ("leader", "standby") if killed in self.sent(name)] == [sent_by]
        wait_for(self._all_finished, 30, self.describe)
        jobs = db.session.scalars(select(Job).where(Job.type == PROBE_TASK)).all()
        periods = sorted(job.args[BEAT_ARG]["period"] for job in jobs)
        assert periods == sorted(set(periods)), f"a period was sent twice: {periods}"
        runs = self.runs()
        assert runs == Counter(dict.fromkeys(periods, 1)), f"runs {runs}\n{self.describe()}"
        assert runs[killed] == 1
        first, last = (datetime.fromisoformat(p) for p in (periods[0], periods[-1]))
        step = timedelta(seconds=PERIOD_SECONDS)
        every = [(first + i * step).isoformat() for i in range(int((last - first) / step) + 1)]
        assert periods == every, f"a period was never sent: {periods}"

    def _all_finished(self) -> bool:
        db.session.rollback()
        statuses = db.session.scalars(select(Job.status).where(Job.type == PROBE_TASK)).all()
        return bool(statuses) and set(statuses) == {"succeeded"}


@pytest.fixture
def failover(private_stack: PrivateStacks, tmp_path: Path) -> Iterator[Failover]:
    with Failover(private_stack, tmp_path).running() as running:
        yield running


def test_a_leader_killed_just_after_sending_a_period_is_not_repeated_by_the_standby(
    failover: Failover,
) -> None:
    seen = wait_for(lambda: failover.sent("leader")[1:], 30, failover.describe)[-1]
    killed = _when(lambda: _newer(failover.sent("leader"), seen))
    failover.kill_leader()
    failover.assert_each_period_ran_once(killed, sent_by="leader")


def test_a_leader_killed_while_claiming_a_period_leaves_it_to_the_standby(
    failover: Failover, migrated_database: str
) -> None:
    """The leader's claim waits on the row (held here) when it is killed: its transaction
    never commits, and the standby sends that period instead, once."""
    wait_for(lambda: failover.sent("leader"), 30, failover.describe)
    engine = create_engine(migrated_database)
    try:
        with engine.connect() as conn:
            seen = failover.sent("leader")[-1]
            last = _when(lambda: _newer(failover.sent("leader"), seen))
            # Well before the next period: hold the entry's row, as a slow commit would.
            conn.execute(
                text("SELECT 1 FROM beat_entries WHERE name = :name FOR UPDATE"),
                {"name": PROBE_ENTRY},
            )
            wait_for(lambda: _claim_waiting(engine), PERIOD_SECONDS * 2, failover.describe)
            failover.kill_leader()
            conn.rollback()  # the killed leader's claim goes ahead, then dies with it
        killed = (datetime.fromisoformat(last) + timedelta(seconds=PERIOD_SECONDS)).isoformat()
        failover.assert_each_period_ran_once(killed, sent_by="standby")
    finally:
        engine.dispose()


def _when(found: Callable[[], Any], timeout: float = 30) -> Any:
    """Poll tightly (a SIGKILL must land right after the event), return what was found."""
    deadline = time.monotonic() + timeout
    while not (value := found()):
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.002)
    return value


def _newer(sent: list[str], seen: str) -> str | None:
    return sent[-1] if sent and sent[-1] != seen else None


def _claim_waiting(engine: Any) -> bool:
    """A beat's claim of the probe entry is waiting for the row lock."""
    with engine.connect() as conn:
        waiting = conn.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock' AND query LIKE 'INSERT INTO beat_entries%'"
            )
        ).scalar_one()
    return bool(waiting)
