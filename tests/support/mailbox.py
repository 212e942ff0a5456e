"""A real SMTP server (aiosmtpd) inside the test process that keeps what it receives."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default as email_policy
from pathlib import Path
from typing import Any

from tests.support.polling import wait_for


class Mailbox:
    """A real SMTP server (aiosmtpd) in the test process that keeps what it receives."""

    def __init__(self, port: int) -> None:
        from aiosmtpd.controller import Controller

        self.messages: list[EmailMessage] = []
        self._lock = threading.Lock()
        self._folder: Path | None = None
        self.controller = Controller(self, hostname="127.0.0.1", port=port)
        self.url = f"smtp://127.0.0.1:{port}"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = message_from_bytes(envelope.content, policy=email_policy)
        assert isinstance(message, EmailMessage)
        with self._lock:
            self.messages.append(message)
            if self._folder is not None:  # whole files only: write, then rename
                path = self._folder / f"{len(self.messages):05d}.eml"
                path.with_suffix(".part").write_bytes(envelope.content)
                path.with_suffix(".part").rename(path)
        return "250 Message accepted for delivery"

    def start(self) -> None:
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()

    @contextmanager
    def saving_to(self, folder: Path) -> Iterator[Path]:
        """Also write each message received meanwhile to `folder` as a .eml file, as the
        development mail sink does (for readers outside this process)."""
        folder.mkdir(parents=True, exist_ok=True)
        self._folder = folder
        try:
            yield folder
        finally:
            self._folder = None

    def to(self, address: str) -> list[EmailMessage]:
        with self._lock:
            return [m for m in self.messages if address.lower() in str(m["To"]).lower()]

    def wait_for(
        self, address: str, subject_contains: str = "", timeout: float = 20
    ) -> EmailMessage:
        """The newest message to `address` whose subject contains the text."""

        def find() -> EmailMessage | None:
            found = [m for m in self.to(address) if subject_contains in str(m["Subject"])]
            return found[-1] if found else None

        message = wait_for(
            find, timeout, lambda: f"mail so far: {[str(m['Subject']) for m in self.messages]}"
        )
        assert message is not None
        return message

    @staticmethod
    def text_of(message: EmailMessage) -> str:
        part = message.get_body(preferencelist=("plain",))
        assert part is not None, "the email has no text part"
        return str(part.get_content())

    @staticmethod
    def link_token(message: EmailMessage, path: str) -> str:
        """The token of the link to `path` (e.g. "/reset-password") in the text part."""
        text = Mailbox.text_of(message)
        match = re.search(re.escape(path) + r"\?token=([A-Za-z0-9._-]+)", text)
        assert match, f"no {path} link in:\n{text}"
        return match.group(1)
