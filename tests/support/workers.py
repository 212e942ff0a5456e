"""A real Celery worker process (prefork) for the tests, and a context manager for one."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from celeryconfig import QUEUES
from config import Settings
from tests.support.paths import ROOT
from tests.support.polling import wait_for
from tests.support.settings import settings_env


class Worker:
    """A real `celery worker` subprocess (prefork) consuming every queue; `app` is what
    `celery -A` loads (a test module adding tasks of its own, say)."""

    def __init__(
        self,
        settings: Settings,
        log_path: Path,
        concurrency: int = 2,
        app: str = "make_celery:celery_app",
    ) -> None:
        self.settings, self.log_path, self.concurrency = settings, log_path, concurrency
        self.app = app
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        cmd = [
            sys.executable, "-m", "celery", "-A", self.app, "worker",
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
