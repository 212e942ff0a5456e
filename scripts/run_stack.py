"""`make run`, after devservices has set DATABASE_URL/REDIS_URL: migrate, print where
everything is, then hand over to honcho (web, worker, beat, flower from the Procfile)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from config import load_settings  # noqa: E402 - after the path fix above


def flower_credentials() -> str:
    """Flower must never run open: the configured login, or in development one invented
    once and kept in var/, which Flower's launcher reads through FLOWER_BASIC_AUTH_FILE
    (so the password is in no process's environment or command line)."""
    configured_file = os.environ.get("FLOWER_BASIC_AUTH_FILE")
    if configured_file:
        path = Path(configured_file)
        return path.read_text().strip() if path.is_file() else ""
    configured = os.environ.get("FLOWER_BASIC_AUTH")
    if configured:
        return configured
    path = ROOT / "var" / "flower-basic-auth"
    path.parent.mkdir(exist_ok=True)
    if not path.exists():
        path.write_text(f"admin:{secrets.token_urlsafe(12)}")
        path.chmod(0o600)
    os.environ["FLOWER_BASIC_AUTH_FILE"] = str(path)
    return path.read_text().strip()


def _mail_destination() -> str:
    url = os.environ.get("SMTP_URL", "")
    if "127.0.0.1" in url or "localhost" in url:
        return f"{url.split('@')[-1]} (local sink: read them under var/mail/*.eml)"
    return url.split("@")[-1] or "not configured"


def point_local_gateway_webhooks(port: str) -> str | None:
    """With localstripe, have it send its webhooks to this API (as Stripe would)."""
    base = os.environ.get("STRIPE_API_BASE", "")
    secret = os.environ.get("STRIPE_WEBHOOK_SECRET", "")
    if not base.startswith("http://127.0.0.1") or not secret:
        return None
    target = f"http://127.0.0.1:{port}/api/v1/webhooks/stripe"
    body = urllib.parse.urlencode({"url": target, "secret": secret}).encode()
    request = urllib.request.Request(f"{base}/_config/webhooks/maycole", data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5):
            return f"{base} (localstripe; webhooks to {target})"
    except OSError as exc:
        return f"{base} (could not configure webhooks: {exc})"


def pin_public_api_url() -> str:
    """PUBLIC_API_URL as configured, or derived from the web's PORT/BIND (config.py) and
    exported: honcho gives every process a PORT of its own (web $PORT, worker +100, beat
    +200, ...), so a worker deriving its own would mail links to a port nobody serves."""
    if not os.environ.get("PUBLIC_API_URL"):
        os.environ["PUBLIC_API_URL"] = load_settings().public_api_url
    return os.environ["PUBLIC_API_URL"]


def main() -> int:
    os.chdir(ROOT)
    # A development stack (local mail sink, localstripe, a generated Flower login): say so,
    # or the settings are production's and refuse the development secret.
    os.environ["APP_ENV"] = os.environ.get("APP_ENV") or "development"
    flask = [sys.executable, "-m", "flask", "--app", "app:create_app"]
    subprocess.run([*flask, "db", "upgrade"], check=True)
    port, flower_port = os.environ.get("PORT", "8000"), os.environ.get("FLOWER_PORT", "5555")
    api = pin_public_api_url().rstrip("/")
    auth = flower_credentials()
    print(
        f"\n  API      {api}/api\n"
        f"  Docs     {api}/docs\n"
        f"  Ready    {api}/readyz\n"
        f"  Flower   http://127.0.0.1:{flower_port}/  (login {auth.split(':', 1)[0]}, "
        f"password in var/flower-basic-auth, or as configured)\n"
        f"  Mail     {_mail_destination()}\n"
        f"  Payments {point_local_gateway_webhooks(port) or 'Stripe (STRIPE_SECRET_KEY)'}\n"
        "  Ctrl-C stops everything.\n",
        flush=True,
    )
    honcho = Path(sys.executable).with_name("honcho")
    os.execv(honcho, [str(honcho), "start", "-p", port])
    return 0  # not reached


if __name__ == "__main__":
    raise SystemExit(main())
