"""The other throwaway servers for make run/test: the SMTP sink (scripts/mailsink.py) and a
fake Stripe (localstripe, scripts/localstripe_server.py), each found on its port or started,
unless SMTP_URL / STRIPE_SECRET_KEY point elsewhere.
"""

from __future__ import annotations

import os
import pwd
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from scripts.dev_server import HOST, Server, port_open, redact, say


class MailSink(Server):
    """The development SMTP sink (scripts/mailsink.py), saving mail to ``workdir/mail``."""

    name = "mailsink"

    def _prepare(self, log: IO[bytes]) -> tuple[list[str], pwd.struct_passwd | None]:
        script = Path(__file__).resolve().with_name("mailsink.py")
        args = ["--port", str(self.port), "--dir", str(self.maildir)]
        return [sys.executable, str(script), *args], None

    @property
    def maildir(self) -> Path:
        """Where the sink saves messages (``workdir/mail``)."""
        return self.workdir / "mail"

    def _ready(self) -> bool:
        return port_open(self.port)

    def url(self) -> str:
        """Return ``smtp://127.0.0.1:port``."""
        return f"smtp://{HOST}:{self.port}"


def ensure_mail(
    workdir: Path = Path("var"), env: Mapping[str, str] | None = None
) -> tuple[str, MailSink | None]:
    """Return (SMTP_URL, sink we started or None), finding or starting a local SMTP sink."""
    env = os.environ if env is None else env
    if env.get("SMTP_URL"):
        say(f"mail: using SMTP_URL from environment ({redact(env['SMTP_URL'])})")
        return env["SMTP_URL"], None
    port = int(env.get("SMTP_PORT") or 1025)
    url = f"smtp://{HOST}:{port}"
    if port_open(port):
        say(f"mail: found SMTP server at {HOST}:{port}")
        return url, None
    began = time.monotonic()
    server = MailSink(port, workdir)
    try:
        server.start()
    except RuntimeError:
        # Another `make test`/`make run` may have started its sink on this port meanwhile.
        if port_open(port):
            say(f"mail: found SMTP server at {HOST}:{port}")
            return url, None
        raise
    say(
        f"mail: started SMTP sink at {HOST}:{port} (messages saved in {server.maildir}, "
        f"{time.monotonic() - began:.1f} s)"
    )
    return url, server


# What the child command gets when payments go to the local fake (test-mode style keys).
LOCAL_STRIPE_KEY = "sk_test_local"
LOCAL_WEBHOOK_SECRET = "whsec_local_dev"


class LocalStripeServer(Server):
    """localstripe (scripts/localstripe_server.py): a fake Stripe API on 127.0.0.1:port.

    Its data lives in memory, or in ``store`` when given (so a restart keeps it).
    """

    name = "localstripe"

    def __init__(self, port: int, workdir: Path, store: Path | None = None) -> None:
        super().__init__(port, workdir)
        self.store = Path(store).absolute() if store else None

    def _prepare(self, log: IO[bytes]) -> tuple[list[str], pwd.struct_passwd | None]:
        script = Path(__file__).resolve().with_name("localstripe_server.py")
        args = ["--port", str(self.port)] + (["--store", str(self.store)] if self.store else [])
        return [sys.executable, str(script), *args], None

    def _ready(self) -> bool:
        return answers_like_stripe(self.port)

    @property
    def api_base(self) -> str:
        """The value for STRIPE_API_BASE: ``http://127.0.0.1:port``."""
        return f"http://{HOST}:{self.port}"


def answers_like_stripe(port: int) -> bool:
    """Whether 127.0.0.1:port serves a Stripe-like API (lists customers for a test key)."""
    request = urllib.request.Request(
        f"http://{HOST}:{port}/v1/customers?limit=1",
        headers={"Authorization": f"Bearer {LOCAL_STRIPE_KEY}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return b'"list"' in response.read()
    except (OSError, urllib.error.URLError):
        return False


def ensure_stripe(
    workdir: Path = Path("var"), env: Mapping[str, str] | None = None
) -> tuple[dict[str, str], LocalStripeServer | None]:
    """Return (STRIPE_* variables for the child, server we started or None).

    With STRIPE_SECRET_KEY configured the child talks to Stripe (or STRIPE_API_BASE) and
    nothing is started; otherwise to a localstripe found or started on $STRIPE_PORT.
    """
    env = os.environ if env is None else env
    if env.get("STRIPE_SECRET_KEY"):
        where = env.get("STRIPE_API_BASE") or "api.stripe.com"
        say(f"stripe: using STRIPE_SECRET_KEY from environment (API at {where})")
        return {}, None
    port = int(env.get("STRIPE_PORT") or 8420)
    server: LocalStripeServer | None = None
    if port_open(port):
        if not answers_like_stripe(port):
            raise RuntimeError(
                f"stripe: {HOST}:{port} is in use by something that is not a Stripe-like API; "
                "set a free STRIPE_PORT (or STRIPE_SECRET_KEY to use Stripe)"
            )
        say(f"stripe: found localstripe at {HOST}:{port}")
    else:
        began = time.monotonic()
        server = LocalStripeServer(port, workdir, store=workdir / "localstripe" / "store.pickle")
        try:
            server.start()
        except RuntimeError:
            # Another `make run`/`make test` may have started one on this port meanwhile.
            if not answers_like_stripe(port):
                raise
            say(f"stripe: found localstripe at {HOST}:{port}")
            server = None
        else:
            say(
                f"stripe: started localstripe at {HOST}:{port} (data in {server.store}, "
                f"{time.monotonic() - began:.1f} s)"
            )
    variables = {
        "STRIPE_API_BASE": f"http://{HOST}:{port}",
        "STRIPE_SECRET_KEY": LOCAL_STRIPE_KEY,
        "STRIPE_WEBHOOK_SECRET": env.get("STRIPE_WEBHOOK_SECRET") or LOCAL_WEBHOOK_SECRET,
    }
    return variables, server
