"""gunicorn serving the app as in production, on a free port, for cross-process tests."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

from config import Settings
from scripts.devservices import free_port
from tests.support.paths import LOGS, ROOT
from tests.support.polling import wait_for
from tests.support.settings import settings_env


class WebServer:
    """`gunicorn -c gunicorn.conf.py 'app:create_app()'` as in the Procfile, on a free port."""

    def __init__(
        self, name: str, settings: Settings, *, workers: int = 1, threads: int = 4
    ) -> None:
        self.name, self.settings, self.port = name, settings, free_port()
        self.workers, self.threads = workers, threads
        self.log_path = LOGS / f"web-{name}.log"
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
