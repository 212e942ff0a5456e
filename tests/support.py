"""Test helpers: settings for the test run, a real Celery worker process, polling."""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default as email_policy
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import select
from werkzeug.test import TestResponse

from celeryconfig import QUEUES
from config import Settings, load_settings
from extensions import db
from models import Job
from scripts.devservices import LocalStripeServer

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
    # Tests aggregate one team several times in a row; the cooldown has its own test.
    "analytics_aggregate_cooldown_seconds": 0,
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


class Mailbox:
    """A real SMTP server (aiosmtpd) in the test process that keeps what it receives."""

    def __init__(self, port: int) -> None:
        from aiosmtpd.controller import Controller

        self.messages: list[EmailMessage] = []
        self._lock = threading.Lock()
        self.controller = Controller(self, hostname="127.0.0.1", port=port)
        self.url = f"smtp://127.0.0.1:{port}"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = message_from_bytes(envelope.content, policy=email_policy)
        assert isinstance(message, EmailMessage)
        with self._lock:
            self.messages.append(message)
        return "250 Message accepted for delivery"

    def start(self) -> None:
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()

    def to(self, address: str) -> list[EmailMessage]:
        with self._lock:
            return [m for m in self.messages if address.lower() in str(m["To"]).lower()]

    def wait_for(
        self, address: str, subject_contains: str = "", timeout: float = 20
    ) -> EmailMessage:
        """The newest message to `address` whose subject contains the text."""

        def find() -> EmailMessage | None:
            found = [m for m in self.to(address) if subject_contains in str(m["Subject"])]
            return found[-1] if found else None

        message = wait_for(
            find, timeout, lambda: f"mail so far: {[str(m['Subject']) for m in self.messages]}"
        )
        assert message is not None
        return message

    @staticmethod
    def text_of(message: EmailMessage) -> str:
        part = message.get_body(preferencelist=("plain",))
        assert part is not None, "the email has no text part"
        return str(part.get_content())

    @staticmethod
    def link_token(message: EmailMessage, path: str) -> str:
        """The token of the link to `path` (e.g. "/reset-password") in the text part."""
        text = Mailbox.text_of(message)
        match = re.search(re.escape(path) + r"\?token=([A-Za-z0-9._-]+)", text)
        assert match, f"no {path} link in:\n{text}"
        return match.group(1)


class LocalStripe:
    """localstripe (a fake Stripe API) as a subprocess on 127.0.0.1:port, for tests.

    `stop()` then `start()` restarts it on the same port, which is how tests take the
    gateway down and bring it back. Its data lives in memory only, so a restart (like
    `flush()`) forgets every customer, payment and plan; webhook endpoints survive
    `flush()` but not a restart.
    """

    def __init__(self, port: int, logs: Path = ROOT / "var" / "test-logs") -> None:
        self.server = LocalStripeServer(port, logs)  # logs to logs/localstripe.log
        self.port = port
        self.url = self.server.api_base

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        self.server.stop()

    def flush(self) -> None:
        """Delete every object it holds (its `DELETE /_config/data`)."""
        self._config("DELETE", "/_config/data")

    def configure_webhook(
        self, url: str, secret: str, events: list[str] | None = None, name: str = "tests"
    ) -> None:
        """Send events (all, or those named) to `url`, signed with `secret` like Stripe."""
        body: dict[str, Any] = {"url": url, "secret": secret}
        if events is not None:
            body["events"] = events
        self._config("POST", f"/_config/webhooks/{name}", body)

    def _config(self, method: str, path: str, body: dict[str, Any] | None = None) -> None:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200, f"localstripe {method} {path}: {response.status}"


class MotoS3:
    """moto's S3 in server mode (real HTTP, in a thread), for the app and its workers.

    boto3 needs credentials even for moto: dummy ones go into os.environ, which
    `settings_env` copies, so worker subprocesses sign requests the same way.
    """

    def __init__(self, port: int) -> None:
        from moto.server import ThreadedMotoServer

        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)

    def start(self) -> None:
        os.environ["AWS_ACCESS_KEY_ID"] = "testing"
        os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"
        os.environ.pop("AWS_SESSION_TOKEN", None)
        self._server.start()

    def stop(self) -> None:
        self._server.stop()


class WebServer:
    """`gunicorn -c gunicorn.conf.py 'app:create_app()'` as in the Procfile, on a free port."""

    def __init__(
        self, name: str, settings: Settings, *, workers: int = 1, threads: int = 4
    ) -> None:
        from scripts.devservices import free_port

        self.name, self.settings, self.port = name, settings, free_port()
        self.workers, self.threads = workers, threads
        self.log_path = ROOT / "var" / "test-logs" / f"web-{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> None:
        env = {
            **settings_env(self.settings),
            "BIND": f"127.0.0.1:{self.port}",
            "WEB_CONCURRENCY": str(self.workers),
            "WEB_THREADS": str(self.threads),
            # Its own metrics files: a parallel run's gunicorn must not wipe or sum ours.
            "PROMETHEUS_MULTIPROC_DIR": str(self.log_path.with_suffix(f".{self.port}.metrics")),
        }
        cmd = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "app:create_app()"]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=log)
        wait_for(lambda: self._healthy(), timeout, self.describe)

    def _healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"gunicorn {self.name} exited. {self.describe()}")
        try:
            return self.request("GET", "/healthz", timeout=1)[0] == 200
        except OSError:
            return False

    def describe(self) -> str:
        return f"{self.log_path}:\n{self.log_path.read_text(errors='replace')[-3000:]}"

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 10,
    ) -> tuple[int, dict[str, str], Any]:
        """(status, headers, parsed JSON body or None) of one plain request."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            all_headers = {"Content-Type": "application/json", **(headers or {})}
            payload = json.dumps(body).encode() if body is not None else None
            conn.request(method, path, body=payload, headers=all_headers)
            response = conn.getresponse()
            raw = response.read()
            return response.status, dict(response.getheaders()), json.loads(raw) if raw else None
        finally:
            conn.close()
