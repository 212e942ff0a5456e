"""`devservices run` provides a fake Stripe (localstripe) unless real keys are configured."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import stripe

from scripts import devservices as ds
from tests.support import refused

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "devservices.py"

# The child pays through whatever devservices handed it, like the app would.
CHILD = """
import os, stripe
for name in ("STRIPE_API_BASE", "STRIPE_SECRET_KEY", "STRIPE_WEBHOOK_SECRET"):
    print(f"{name}={os.environ.get(name, '')}")
client = stripe.StripeClient(
    os.environ["STRIPE_SECRET_KEY"], base_addresses={"api": os.environ["STRIPE_API_BASE"]}
)
intent = client.v1.payment_intents.create(
    params={"amount": 1234, "currency": "eur", "payment_method": "pm_card_visa"}
)
print(f"intent={intent.id} {intent.status} {intent.amount}")
"""

ONLY_ENV = "import os; print('KEY=' + os.environ['STRIPE_SECRET_KEY'])"
ONLY_ENV += "; print('BASE=' + os.environ.get('STRIPE_API_BASE', ''))"


def run_cli(tmp_path: Path, code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`devservices.py run -- python -c CODE` with only Stripe left for it to provide."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("STRIPE_")}
    # Configured (never contacted) services: this is about Stripe alone.
    given = {
        "DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1:1/unused",
        "REDIS_URL": "redis://127.0.0.1:1/0",
        "SMTP_URL": "smtp://127.0.0.1:1",
    }
    cmd = [sys.executable, str(SCRIPT), "run", "--var", str(tmp_path / "var")]
    return subprocess.run(
        [*cmd, "--", sys.executable, "-c", code],
        cwd=tmp_path,
        env={**inherited, **given, **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_without_keys_a_localstripe_is_started_used_and_stopped(tmp_path: Path) -> None:
    port = ds.free_port()
    result = run_cli(tmp_path, CHILD, STRIPE_PORT=str(port))
    assert result.returncode == 0, result.stderr
    assert f"STRIPE_API_BASE=http://127.0.0.1:{port}\n" in result.stdout
    assert "STRIPE_SECRET_KEY=sk_test_local\n" in result.stdout
    assert "STRIPE_WEBHOOK_SECRET=whsec_local_dev\n" in result.stdout
    assert " requires_confirmation 1234" in result.stdout
    assert f"stripe: started localstripe at 127.0.0.1:{port}" in result.stderr
    assert f"localstripe: stopped throwaway server at 127.0.0.1:{port}" in result.stderr
    assert refused(port)

    # Its data is kept under --var: the next run still knows the payment.
    intent_id = result.stdout.split("intent=")[1].split()[0]
    lookup = "import os, stripe\nbase = {'api': os.environ['STRIPE_API_BASE']}\n"
    lookup += "client = stripe.StripeClient(os.environ['STRIPE_SECRET_KEY'], base_addresses=base)\n"
    lookup += f"print('amount=' + str(client.v1.payment_intents.retrieve('{intent_id}').amount))\n"
    lookup += "print('secret=' + os.environ['STRIPE_WEBHOOK_SECRET'])"
    again = run_cli(tmp_path, lookup, STRIPE_PORT=str(port), STRIPE_WEBHOOK_SECRET="whsec_mine")
    assert again.returncode == 0, again.stderr
    assert "amount=1234" in again.stdout
    assert "secret=whsec_mine" in again.stdout  # a configured webhook secret is kept
    assert refused(port)


def test_a_running_localstripe_is_reused_and_left_running(tmp_path: Path) -> None:
    server = ds.LocalStripeServer(ds.free_port(), tmp_path)
    server.start()
    try:
        result = run_cli(tmp_path, CHILD, STRIPE_PORT=str(server.port))
        assert result.returncode == 0, result.stderr
        assert f"stripe: found localstripe at 127.0.0.1:{server.port}" in result.stderr
        assert "started" not in result.stderr and "stopped" not in result.stderr
        intent_id = result.stdout.split("intent=")[1].split()[0]
        client = stripe.StripeClient("sk_test_local", base_addresses={"api": server.api_base})
        assert client.v1.payment_intents.retrieve(intent_id).amount == 1234
    finally:
        server.stop()


def test_a_port_taken_by_something_else_is_reported(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as other:
        port = other.getsockname()[1]
        result = run_cli(tmp_path, ONLY_ENV, STRIPE_PORT=str(port))
    assert result.returncode == 1
    assert "not a Stripe-like API" in result.stderr and "KEY=" not in result.stdout


def test_with_a_secret_key_nothing_is_started(tmp_path: Path) -> None:
    port = ds.free_port()
    result = run_cli(tmp_path, ONLY_ENV, STRIPE_SECRET_KEY="sk_test_real", STRIPE_PORT=str(port))
    assert result.returncode == 0, result.stderr
    assert "KEY=sk_test_real\nBASE=\n" in result.stdout  # passed through untouched
    assert "stripe: using STRIPE_SECRET_KEY from environment" in result.stderr
    assert "sk_test_real" not in result.stderr  # never printed
    assert "localstripe" not in result.stderr and refused(port)
