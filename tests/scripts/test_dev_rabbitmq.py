"""`devservices run --broker rabbitmq` (what `BROKER=rabbitmq make run|test` calls) hands
the reachable RabbitMQ to the command as its Celery broker, or says why it cannot."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from scripts import devservices as ds
from tests.support.rabbitmq import rabbitmq_url

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "devservices.py"
PRINT_BROKER = "import os; print('BROKER=' + os.environ.get('CELERY_BROKER_URL', ''))"


def run_cli(tmp_path: Path, *options: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`devservices.py run OPTIONS -- python -c PRINT_BROKER`, every other service given."""
    inherited = {k: v for k, v in os.environ.items() if k not in ("CELERY_BROKER_URL",)}
    given = {  # configured, never contacted: this is about the broker alone
        "DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1:1/unused",
        "REDIS_URL": "redis://127.0.0.1:1/0",
        "SMTP_URL": "smtp://127.0.0.1:1",
        "STRIPE_SECRET_KEY": "sk_test_unused",
    }
    cmd = [sys.executable, str(SCRIPT), "run", "--var", str(tmp_path / "var"), *options]
    return subprocess.run(
        [*cmd, "--", sys.executable, "-c", PRINT_BROKER],
        cwd=tmp_path, env={**inherited, **given, **env},
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip


def test_broker_rabbitmq_makes_the_reachable_rabbitmq_celerys_broker(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "--broker", "rabbitmq", RABBITMQ_URL=rabbitmq_url())
    assert result.returncode == 0, result.stderr
    assert f"BROKER={rabbitmq_url()}" in result.stdout
    assert "rabbitmq: found at" in result.stderr + result.stdout


def test_without_a_rabbitmq_it_stops_with_a_readable_message(tmp_path: Path) -> None:
    url = f"amqp://guest:guest@127.0.0.1:{ds.free_port()}//"
    result = run_cli(tmp_path, "--broker", "rabbitmq", RABBITMQ_URL=url)
    assert result.returncode == 1
    assert "no RabbitMQ answers" in result.stderr + result.stdout
    assert "BROKER=" not in result.stdout  # the command never ran


def test_the_default_broker_is_left_to_redis(tmp_path: Path) -> None:
    result = run_cli(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "BROKER=\n" in result.stdout
