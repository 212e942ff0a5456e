"""An HTTP reverse proxy that can hold back responses, to catch a worker mid-call."""

from __future__ import annotations

import http.client
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


class SlowProxy:
    """Forwards every request to `upstream`; responses to paths matching `hold` wait
    `hold_seconds` after the upstream has already acted on the request."""

    def __init__(self, upstream: str, port: int) -> None:
        target = urlsplit(upstream)
        self.hold: re.Pattern[str] | None = None
        self.hold_seconds = 0.0
        self.seen: list[str] = []  # "METHOD /path" of every request forwarded
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                conn = http.client.HTTPConnection(
                    target.hostname or "127.0.0.1", target.port, timeout=30
                )
                conn.request(self.command, self.path, body=body, headers=headers)
                upstream_response = conn.getresponse()
                data = upstream_response.read()
                proxy.seen.append(f"{self.command} {self.path.split('?')[0]}")
                if proxy.hold is not None and proxy.hold.search(self.path):
                    time.sleep(proxy.hold_seconds)  # the upstream already did the work
                self.send_response(upstream_response.status)
                for name, value in upstream_response.getheaders():
                    if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

            do_GET = do_POST = do_DELETE = _forward

            def log_message(self, format: str, *args: object) -> None:
                """Keep the test output free of access-log lines."""

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def requests_matching(self, pattern: str) -> list[str]:
        return [line for line in self.seen if re.search(pattern, line)]
