"""A local SMTP sink for development: accepts every message and saves it as a .eml file.

Usage::

    python scripts/mailsink.py --port 1025 --dir var/mail

Each message lands in ``DIR/<UTC timestamp>-<n>.eml`` (open it with any mail client or a
text editor). Started and stopped by ``scripts/devservices.py`` when SMTP_URL is unset.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from email import message_from_bytes
from email.policy import default as email_policy
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP

HOST = "127.0.0.1"


class SaveToDirectory:
    """aiosmtpd handler: write each message to its own file, never lose or overwrite one."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._seq = itertools.count(1)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        content: bytes = envelope.original_content or envelope.content
        # The envelope recipients are not in the headers when they were Bcc'd.
        head = f"X-Envelope-To: {', '.join(envelope.rcpt_tos)}\r\n".encode()
        path = self._save(head + content)
        subject = message_from_bytes(content, policy=email_policy).get("Subject", "")
        print(f"mailsink: saved {path.name} ({subject})", flush=True)
        return "250 Message accepted for delivery"

    def _save(self, data: bytes) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        # Written aside, then linked into place: a reader never sees half a message, and
        # link() never replaces a file an earlier sink run saved under the same name.
        incoming = self.directory / f".incoming-{os.getpid()}"
        incoming.write_bytes(data)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        try:
            while True:
                path = self.directory / f"{stamp}-{next(self._seq)}.eml"
                try:
                    os.link(incoming, path)
                except FileExistsError:
                    continue
                return path
        finally:
            incoming.unlink()


async def serve(port: int, directory: Path) -> None:
    """Accept SMTP on 127.0.0.1:port until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    handler = SaveToDirectory(directory)
    # A fixed hostname: aiosmtpd would otherwise call socket.getfqdn() (a DNS lookup) per
    # connection.
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="mailsink.local", enable_SMTPUTF8=True), HOST, port
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"mailsink: listening on {HOST}:{port}, saving to {directory}", flush=True)
    async with server:
        await stop.wait()
    print("mailsink: stopped", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``--port`` and ``--dir`` and serve until stopped."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--port", type=int, default=1025)
    parser.add_argument("--dir", type=Path, default=Path("var/mail"))
    opts = parser.parse_args(argv)
    asyncio.run(serve(opts.port, opts.dir.absolute()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
