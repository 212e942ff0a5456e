"""Worker liveness: the heartbeat record each worker keeps, and the check run against it.

A Celery worker can stay alive yet stop taking tasks after a broker reconnect (celery#8030,
#8082, #4453): its PID is there and `celery inspect ping` answers (that is a separate
channel), but nothing is consumed. So liveness is judged by consumption. The worker's
main process sends a heartbeat message to its own queue (`worker_direct`) every
WORKER_HEARTBEAT_SECONDS, on the connection it takes tasks from, and notes when one
arrives (tasks/runtime/worker_health.py). This module holds the record it writes (one JSON file
per worker node under WORKER_HEALTH_DIR) and the verdict on it.

A worker whose pool is full (every process busy, the prefetch window used up) cannot
take a heartbeat either, and that is not a fault: while it is saturated it counts as
healthy, and the heartbeat waiting in its queue arrives as soon as a process frees up.

Standard library only: `scripts/worker_check.py` runs this as a liveness probe every few
seconds and must stay cheap.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def health_dir(configured: str) -> Path:
    """WORKER_HEALTH_DIR; a relative one is below the project, whatever the cwd."""
    path = Path(configured)
    return path if path.is_absolute() else ROOT / path


@dataclass
class HeartbeatRecord:
    """One worker's state, as its main process last wrote it (times are Unix seconds)."""

    node: str
    pid: int
    started_at: float
    # The worker's event loop ran its heartbeat timer (stops while it is blocked or
    # reconnecting to the broker).
    tick_at: float
    # Last proof that it consumes: a heartbeat arrived, or it was saturated (no room).
    healthy_at: float
    received_at: float | None = None
    published_at: float | None = None
    saturated: bool = False


def record_path(directory: str | Path, node: str) -> Path:
    """The file of worker `node` (node names look like `worker@host`)."""
    return Path(directory) / f"{re.sub(r'[^A-Za-z0-9@._-]', '_', node)}.json"


def write_record(directory: str | Path, record: HeartbeatRecord) -> None:
    """Replace the worker's file atomically (a probe never reads half a file)."""
    path = record_path(directory, record.node)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(asdict(record)))
    os.replace(tmp, path)


def remove_record(directory: str | Path, node: str) -> None:
    record_path(directory, node).unlink(missing_ok=True)


def read_record(path: Path) -> HeartbeatRecord | None:
    try:
        return HeartbeatRecord(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def problem(record: HeartbeatRecord, max_age: float, now: float | None = None) -> str | None:
    """Why this worker is not live, or None if it is."""
    now = time.time() if now is None else now
    if not pid_alive(record.pid):
        return f"{record.node}: process {record.pid} is not running"
    stalled = now - record.tick_at
    if stalled > max_age:
        return (
            f"{record.node}: its event loop has not run for {stalled:.0f} s "
            "(blocked, or reconnecting to the broker)"
        )
    starved = now - record.healthy_at
    if starved > max_age:
        return (
            f"{record.node}: no heartbeat consumed for {starved:.0f} s although it had room "
            "for one: it has stopped consuming tasks"
        )
    return None


def check(
    directory: str | Path, max_age: float, node: str | None = None, now: float | None = None
) -> tuple[list[str], list[str]]:
    """(live worker nodes, problems) for `node`, or for every running worker in `directory`.

    Files of processes that are gone (a worker killed outright) are ignored unless that
    node was asked for; finding no running worker at all is a problem.
    """
    if node is not None:
        record = read_record(record_path(directory, node))
        if record is None:
            return [], [f"{node}: no heartbeat record in {directory}"]
        records = [record]
    else:
        found = (read_record(p) for p in sorted(Path(directory).glob("*.json")))
        records = [r for r in found if r is not None and pid_alive(r.pid)]
        if not records:
            return [], [f"no running worker has a heartbeat record in {directory}"]
    live, problems = [], []
    for record in records:
        why = problem(record, max_age, now)
        if why is None:
            live.append(record.node)
        else:
            problems.append(why)
    return live, problems
