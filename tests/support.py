"""Test helpers: settings for the test run, a real Celery worker process, polling."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import select
from werkzeug.test import TestResponse

from celeryconfig import QUEUES
from config import Settings, load_settings
from extensions import db
from models import Job

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")

# Fast clocks so retry/heartbeat/relay behaviour is observable in seconds.
TEST_OVERRIDES: dict[str, Any] = {
    "app_env": "test",
    "task_max_attempts": 3,
    "retry_backoff_base": 0.2,
    "retry_backoff_max": 2,
    "job_heartbeat_seconds": 0.5,
    "job_stale_seconds": 5,
    "relay_min_age_seconds": 0,
    "log_json": True,
}


def make_settings(**overrides: Any) -> Settings:
    """Settings for the test run: DATABASE_URL/REDIS_URL come from `make test`."""
    return load_settings(**{**TEST_OVERRIDES, **overrides})


def settings_env(settings: Settings) -> dict[str, str]:
    """The same settings as environment variables, for worker subprocesses."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "FLOWER_"))}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        env[name.upper()] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


class Worker:
    """A real `celery worker` subprocess (prefork) consuming every queue."""

    def __init__(self, settings: Settings, log_path: Path, concurrency: int = 2) -> None:
        self.settings, self.log_path, self.concurrency = settings, log_path, concurrency
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        cmd = [
            sys.executable, "-m", "celery", "-A", "make_celery:celery_app", "worker",
            "-Q", ",".join(QUEUES), f"--concurrency={self.concurrency}", "--pool=prefork",
            "--loglevel=INFO", "--without-gossip", "--without-mingle",
            "-n", f"test-{os.getpid()}-{id(self)}@%h",
        ]  # fmt: skip
        self.process = subprocess.Popen(
            cmd, cwd=ROOT, env=settings_env(self.settings), stdout=log, stderr=subprocess.STDOUT
        )
        wait_for(lambda: b"ready." in self._log_since(offset), timeout, self.describe)

    def _log_since(self, offset: int) -> bytes:
        with self.log_path.open("rb") as fh:
            fh.seek(offset)
            return fh.read()

    def describe(self) -> str:
        tail = self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""
        return f"worker log ({self.log_path}):\n{tail}"

    def stop(self, timeout: float = 20) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()  # warm shutdown: finish running tasks
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


@contextmanager
def running_worker(settings: Settings, log_path: Path, concurrency: int = 2) -> Iterator[Worker]:
    worker = Worker(settings, log_path, concurrency)
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()


def wait_for(
    predicate: Callable[[], T], timeout: float = 20, describe: Callable[[], str] | None = None
) -> T:
    """Poll until `predicate()` is truthy; fail with a description after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s. {describe() if describe else ''}")
        time.sleep(0.05)


def fetch_job(job_id: Any) -> Job:
    """The job row as committed right now (bypassing the session's identity map)."""
    db.session.rollback()
    job = db.session.scalar(
        select(Job).where(Job.id == job_id).execution_options(populate_existing=True)
    )
    assert job is not None, f"job {job_id} not found"
    return job


def wait_job(
    job_id: Any,
    statuses: set[str] | str,
    timeout: float = 30,
    describe: Callable[[], str] | None = None,
) -> Job:
    wanted = {statuses} if isinstance(statuses, str) else statuses

    def done() -> Job | None:
        job = fetch_job(job_id)
        return job if job.status in wanted else None

    def why() -> str:
        job = fetch_job(job_id)
        extra = describe() if describe else ""
        return f"job is {job.status} (attempts {job.attempts}, error {job.error!r}). {extra}"

    found = wait_for(done, timeout, why)
    assert found is not None
    return found


def problem_body(response: TestResponse, status: int) -> dict[str, Any]:
    """The parsed problem+json body, after checking the status and media type."""
    text = response.get_data(as_text=True)
    assert response.status_code == status, text
    assert response.mimetype == "application/problem+json"
    body: dict[str, Any] = json.loads(text)
    assert body["status"] == status and body["detail"]
    return body


def bearer(token: str) -> Mapping[str, str]:
    return {"Authorization": f"Bearer {token}"}
