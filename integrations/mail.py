"""Sending email: a one-method `Mailer` interface and its SMTP implementation (smtplib).

Every failure is classified for the task layer:
- `TransientMailError`: the server was unreachable, slow, said 4xx, or the circuit is
  open. Retrying later can help.
- `PermanentMailError`: the server answered 5xx about this message (e.g. "550 no such
  user"). Sending the same message again cannot help.

Only failures of the server itself count towards the `smtp` circuit breaker: a server
that refuses one recipient is healthy, so that refusal must never open the circuit.
"""

from __future__ import annotations

import smtplib
import ssl
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import parseaddr
from typing import Protocol
from urllib.parse import parse_qs, unquote, urlsplit

import pybreaker
from flask import current_app

from integrations.breaker import breaker

SCHEMES = {"smtp": 25, "smtps": 465}
_TRUE = {"1", "true", "yes", "on"}


class MailError(Exception):
    """A message could not be sent."""


class TransientMailError(MailError):
    """Sending failed in a way that a later attempt may not (retry with backoff)."""


class PermanentMailError(MailError):
    """The server rejected this message for good (5xx); do not retry."""


class Mailer(Protocol):
    """Something that delivers one email or raises a `MailError`."""

    def send(self, message: EmailMessage) -> None: ...


@dataclass(frozen=True)
class SmtpTarget:
    """Where and how to connect, parsed from `smtp://[user:pass@]host:port[?starttls=true]`."""

    host: str
    port: int
    implicit_tls: bool = False  # smtps://: TLS from the first byte
    starttls: bool = False  # smtp://...?starttls=true: upgrade after EHLO, or refuse to send
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def uses_tls(self) -> bool:
        """Whether the connection is encrypted (implicitly or by STARTTLS)."""
        return self.implicit_tls or self.starttls


def parse_smtp_url(url: str) -> SmtpTarget:
    """Parse SMTP_URL; raise ValueError (without echoing a password) if it is unusable."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ValueError("SMTP_URL must start with smtp:// or smtps://")
    if not parts.hostname:
        raise ValueError("SMTP_URL has no host")
    query = parse_qs(parts.query)
    starttls = query.get("starttls", ["false"])[-1].lower() in _TRUE
    if parts.scheme == "smtps" and starttls:
        raise ValueError("SMTP_URL: smtps:// is already TLS; starttls applies to smtp:// only")
    return SmtpTarget(
        host=parts.hostname,
        port=parts.port or SCHEMES[parts.scheme],
        implicit_tls=parts.scheme == "smtps",
        starttls=starttls,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


class SmtpMailer:
    """Delivers over SMTP with a timeout on every socket operation, through a breaker."""

    def __init__(
        self,
        target: SmtpTarget,
        *,
        timeout: float,
        circuit: pybreaker.CircuitBreaker,
        helo_name: str = "localhost",
    ) -> None:
        self.target, self.timeout, self.circuit = target, timeout, circuit
        # An explicit EHLO name: smtplib's default is socket.getfqdn(), a reverse DNS
        # lookup that can stall for seconds on a badly configured host.
        self.helo_name = helo_name

    def send(self, message: EmailMessage) -> None:
        """Deliver `message` to its To/Cc/Bcc recipients or raise a `MailError`."""
        try:
            refusal = self.circuit.call(self._deliver, message)
        except pybreaker.CircuitBreakerError as exc:
            # Either this failure just tripped the circuit (its cause is the context), or
            # the circuit was open and the server was not contacted (not a new failure).
            cause = f"; last error: {exc.__context__}" if exc.__context__ else ""
            raise TransientMailError(f"SMTP circuit open ({exc}){cause}") from exc
        if refusal is not None:
            raise refusal

    def _deliver(self, message: EmailMessage) -> MailError | None:
        """One SMTP session. Server failures raise (the breaker counts them); a refusal of
        this message is returned instead, because the server that said it is healthy."""
        try:
            with self._connect() as smtp:
                if self.target.starttls:
                    smtp.starttls(context=ssl.create_default_context())
                    smtp.ehlo()
                if self.target.username:
                    smtp.login(self.target.username, self.target.password or "")
                smtp.send_message(message)
        except smtplib.SMTPRecipientsRefused as exc:
            return _classify(*next(iter(exc.recipients.values())), what="recipient refused")
        except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as exc:
            return _classify(exc.smtp_code, exc.smtp_error, what="message refused")
        except smtplib.SMTPResponseException as exc:
            # Greeting, EHLO, STARTTLS or AUTH failed: the server (or our configuration of
            # it) is broken for every message, so it is transient and counts as a failure.
            reply = _text(exc.smtp_error)
            raise TransientMailError(f"SMTP server error {exc.smtp_code}: {reply}") from exc
        except TimeoutError as exc:
            raise TransientMailError(f"SMTP timed out after {self.timeout:g} s") from exc
        except (smtplib.SMTPException, OSError) as exc:
            # OSError: refused/reset connections, DNS failures, TLS handshake errors.
            raise TransientMailError(f"SMTP unavailable: {type(exc).__name__}: {exc}") from exc
        return None

    def _connect(self) -> smtplib.SMTP:
        host, port, timeout = self.target.host, self.target.port, self.timeout
        if self.target.implicit_tls:
            context = ssl.create_default_context()
            return smtplib.SMTP_SSL(
                host, port, local_hostname=self.helo_name, timeout=timeout, context=context
            )
        return smtplib.SMTP(host, port, local_hostname=self.helo_name, timeout=timeout)


def _text(reply: bytes | str) -> str:
    return reply.decode(errors="replace") if isinstance(reply, bytes) else reply


def _classify(code: int, reply: bytes | str, *, what: str) -> MailError:
    """5xx is the server's final word on this message; anything else may change."""
    error = PermanentMailError if 500 <= code < 600 else TransientMailError
    return error(f"{what}: {code} {_text(reply)}")


def get_mailer() -> SmtpMailer:
    """The mailer configured by settings (SMTP_URL), guarded by the shared `smtp` breaker."""
    settings = current_app.config["SETTINGS"]
    if not settings.smtp_url:
        raise TransientMailError("SMTP_URL is not configured")
    return SmtpMailer(
        parse_smtp_url(settings.smtp_url),
        timeout=settings.smtp_timeout_seconds,
        circuit=breaker("smtp"),
        helo_name=sender_domain(settings.mail_from),
    )


def sender_domain(mail_from: str) -> str:
    """The domain of a From address ("Name <a@b.example>" -> "b.example")."""
    return parseaddr(mail_from)[1].rpartition("@")[2] or "localhost"
