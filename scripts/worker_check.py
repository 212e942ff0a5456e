"""Is the Celery worker on this host consuming? Exit 0 if so, 1 (with the reason) if not.

A worker can stay alive and still stop taking tasks after a broker reconnect (celery#8030),
so its PID says nothing. Each worker sends itself a heartbeat through the broker every
WORKER_HEARTBEAT_SECONDS and records its arrival under WORKER_HEALTH_DIR; this fails when
none has arrived for WORKER_HEARTBEAT_MAX_AGE_SECONDS although the worker had room to take
one (a worker whose every process is busy counts as live), when its event loop stopped,
or when no worker runs here. Use it as the worker container's liveness probe:

    livenessProbe:
      exec:
        command: ["python", "scripts/worker_check.py"]
      periodSeconds: 30
      timeoutSeconds: 10

`--node NAME` checks one worker (its `celery worker -n` name) when several share a host.
It reads a small local file and imports only the settings: cheap enough to run often.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from config import load_settings  # noqa: E402 - after the path fix above
from services.ops.worker_liveness import check, health_dir  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--node", help="the worker's node name (default: every worker here)")
    parser.add_argument(
        "--max-age", type=float, help="seconds (default: WORKER_HEARTBEAT_MAX_AGE_SECONDS)"
    )
    parser.add_argument("--dir", help="heartbeat records (default: WORKER_HEALTH_DIR)")
    args = parser.parse_args(argv)
    settings = load_settings()
    directory = Path(args.dir) if args.dir else health_dir(settings.worker_health_dir)
    max_age = args.max_age or settings.worker_heartbeat_max_age_seconds
    live, problems = check(directory, max_age, args.node)
    for node in live:
        print(f"ok: {node} is consuming")
    for problem in problems:
        print(f"FAIL: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
