"""Redis behind Sentinel of a test's own: a master, a replica and three sentinels
(scripts/dev_redis.py), failing over one second after the master goes silent."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from scripts.devservices import SentinelTopology


@contextmanager
def sentinel_redis(workdir: Path) -> Iterator[SentinelTopology]:
    """A started topology with its files under `workdir`, stopped afterwards."""
    topology = SentinelTopology(workdir, down_after_ms=1000)
    topology.start()
    try:
        yield topology
    finally:
        topology.stop()
