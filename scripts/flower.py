"""Start Flower the only safe way: behind basic auth, on loopback unless told otherwise.

Flower's HTTP API can start arbitrary tasks, and its `/metrics` and `/healthcheck` pages
bypass its login, so it must never listen on a public interface by accident nor run
without credentials outside development (`make run` generates a development login).
Everything else is passed through: `python scripts/flower.py --port=5566`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from config import Settings  # noqa: E402 - after the path fix above


def flower_command(settings: Settings, extra: list[str]) -> list[str]:
    """The `celery flower` command line for these settings (refusing unsafe ones)."""
    if ":" not in settings.flower_basic_auth:
        raise SystemExit(
            "FLOWER_BASIC_AUTH (user:password) is required: Flower's API can start tasks."
        )
    return [
        sys.executable, "-m", "celery", "-A", "make_celery:celery_app", "flower",
        f"--address={settings.flower_address}", f"--port={settings.flower_port}",
        f"--basic-auth={settings.flower_basic_auth}",
        "--persistent=True", f"--db={settings.flower_db}",
        f"--state_save_interval={60_000}",  # ms: a crash loses at most a minute of history
        "--purge_offline_workers=3600",
        *extra,
    ]  # fmt: skip


def main() -> None:
    settings = Settings()
    command = flower_command(settings, sys.argv[1:])
    Path(settings.flower_db).parent.mkdir(parents=True, exist_ok=True)
    # Celery would also read FLOWER_BASIC_AUTH from the environment; the flag is explicit.
    os.execv(sys.executable, command)


if __name__ == "__main__":
    main()
