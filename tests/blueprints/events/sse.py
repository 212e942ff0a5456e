"""Reading Server-Sent Events in tests: frames, a reader with deadlines, a stream through
the Flask test client, and the frame that says a job finished.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from flask.testing import FlaskClient

STREAM = "/api/v1/events/stream"


# --- reading Server-Sent Events ----------------------------------------------------------


@dataclass
class Frame:
    """One SSE block: an event (id, type, data), a comment, a retry hint, or several."""

    id: str | None = None
    event: str | None = None
    data: Any = None
    comments: list[str] = field(default_factory=list)
    retry: int | None = None


def parse_block(block: str) -> Frame:
    frame = Frame()
    for line in block.split("\n"):
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "":
            frame.comments.append(value)
        elif name == "id":
            frame.id = value
        elif name == "event":
            frame.event = value
        elif name == "data":
            frame.data = json.loads(value)
        elif name == "retry":
            frame.retry = int(value)
    return frame


class SSEReader:
    """Frames from a stream of text chunks, each wait bounded by `deadline`."""

    def __init__(self, chunks: Callable[[], bytes | None]) -> None:
        self._chunks, self._buffer, self.ended = chunks, "", False

    def next_frame(self, timeout: float = 20) -> Frame:
        deadline = time.monotonic() + timeout
        while "\n\n" not in self._buffer:
            if time.monotonic() > deadline:
                raise AssertionError(f"no complete frame within {timeout}s: {self._buffer!r}")
            chunk = self._chunks()
            if chunk is None:
                self.ended = True
                raise AssertionError(f"the stream ended; unparsed: {self._buffer!r}")
            self._buffer += chunk.decode()
        block, self._buffer = self._buffer.split("\n\n", 1)
        return parse_block(block)

    def until(self, wanted: Callable[[Frame], bool], timeout: float = 30) -> list[Frame]:
        """Every frame up to and including the first `wanted` one."""
        deadline = time.monotonic() + timeout
        frames: list[Frame] = []
        while True:
            frames.append(self.next_frame(max(0.1, deadline - time.monotonic())))
            if wanted(frames[-1]):
                return frames

    def events(self, count: int, timeout: float = 20) -> list[Frame]:
        """The next `count` events, skipping keepalive comments."""
        deadline = time.monotonic() + timeout
        found: list[Frame] = []
        while len(found) < count:
            frame = self.next_frame(max(0.1, deadline - time.monotonic()))
            if frame.event is not None:
                found.append(frame)
        return found


@contextmanager
def client_stream(
    client: FlaskClient, url: str = STREAM, headers: Mapping[str, str] | None = None
) -> Iterator[SSEReader]:
    """A stream through the Flask test client (each read blocks at most one heartbeat)."""
    response = client.get(url, headers=dict(headers or {}), buffered=False)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "text/event-stream"
    chunks: Iterator[bytes] = iter(response.response)  # type: ignore[arg-type]
    try:
        yield SSEReader(lambda: next(chunks, None))
    finally:
        response.close()  # ends the generator and gives the stream slot back


def finished(job_id: str) -> Callable[[Frame], bool]:
    return lambda f: f.event == "job.finished" and f.data["job_id"] == job_id
