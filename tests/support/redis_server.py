"""A throwaway Redis of a test's own: a broker no other worker listens to."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from scripts.devservices import RedisServer, free_port


@contextmanager
def private_redis(workdir: Path) -> Iterator[RedisServer]:
    """A redis-server on a free port with its files under `workdir`, stopped afterwards."""
    server = RedisServer(free_port(), workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()
