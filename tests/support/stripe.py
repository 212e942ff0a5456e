"""localstripe, a fake Stripe API, as a subprocess the tests can flush, restart and wire."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

from scripts.devservices import LocalStripeServer
from tests.support.paths import LOGS


class LocalStripe:
    """localstripe (a fake Stripe API) as a subprocess on 127.0.0.1:port, for tests.

    `stop()` then `start()` restarts it on the same port, which is how tests take the
    gateway down and bring it back. Its data lives in memory only, so a restart (like
    `flush()`) forgets every customer, payment and plan; webhook endpoints survive
    `flush()` but not a restart.
    """

    def __init__(self, port: int, logs: Path = LOGS) -> None:
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
