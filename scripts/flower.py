"""Start Flower the only safe way: behind basic auth, on loopback unless told otherwise.

Flower's HTTP API can start arbitrary tasks, and its `/metrics` and `/healthcheck` pages
bypass its login, so it must never listen on a public interface by accident nor run
without credentials outside development (`make run` generates a development login).
The login comes from FLOWER_BASIC_AUTH_FILE (a file, e.g. a Docker or Kubernetes secret)
or FLOWER_BASIC_AUTH, and reaches Flower through its environment (Flower reads
FLOWER_BASIC_AUTH itself), never its command line: every local user can read any
process's argv (`ps`, /proc/<pid>/cmdline), while its environment is the owner's alone.
Everything else is passed through: `python scripts/flower.py --port=5566`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from config import Settings  # noqa: E402 - after the path fix above

_LOGIN_FLAGS = ("--basic-auth", "--basic_auth")


def basic_auth(settings: Settings) -> str:
    """The `user:password[,user:password...]` login, or exit saying what is missing."""
    source, login = "FLOWER_BASIC_AUTH", settings.flower_basic_auth.strip()
    if settings.flower_basic_auth_file:
        source = "FLOWER_BASIC_AUTH_FILE"
        try:
            login = Path(settings.flower_basic_auth_file).read_text().strip()
        except OSError as exc:
            raise SystemExit(
                f"FLOWER_BASIC_AUTH_FILE ({settings.flower_basic_auth_file}) cannot be read: "
                f"{exc.strerror}."
            ) from None
    pairs = [entry.partition(":") for entry in login.split(",")]
    if not login or any(not user or not password for user, _, password in pairs):
        raise SystemExit(
            f"{source} must hold user:password (comma-separated for several), each with a "
            "user and a non-empty password: Flower's API can start tasks."
        )
    return login


def flower_command(settings: Settings, extra: list[str]) -> list[str]:
    """The `celery flower` command line for these settings: no secret in it."""
    if any(arg.startswith(_LOGIN_FLAGS) for arg in extra):
        raise SystemExit(
            "Pass Flower's login in FLOWER_BASIC_AUTH or FLOWER_BASIC_AUTH_FILE, not as "
            "--basic-auth: every local user can read a command line."
        )
    return [
        sys.executable, "-m", "celery", "-A", "make_celery:celery_app", "flower",
        f"--address={settings.flower_address}", f"--port={settings.flower_port}",
        "--persistent=True", f"--db={settings.flower_db}",
        f"--state_save_interval={60_000}",  # ms: a crash loses at most a minute of history
        "--purge_offline_workers=3600",
        *extra,
    ]  # fmt: skip


def main() -> None:
    settings = Settings()
    login = basic_auth(settings)
    command = flower_command(settings, sys.argv[1:])
    Path(settings.flower_db).parent.mkdir(parents=True, exist_ok=True)
    os.execve(sys.executable, command, os.environ | {"FLOWER_BASIC_AUTH": login})


if __name__ == "__main__":
    main()
