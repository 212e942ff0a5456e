"""The SMTP mailer and its circuit breaker, against real SMTP servers over TCP and real Redis."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from typing import Any

import pybreaker
import pytest
import redis as redis_lib
from aiosmtpd.controller import Controller
from apiflask import APIFlask
from redis.backoff import NoBackoff
from redis.retry import Retry

from config import Settings
from extensions import redis
from integrations.breaker import FallbackStorage, breaker, build_breaker
from integrations.mail import (
    PermanentMailError,
    SmtpMailer,
    TransientMailError,
    get_mailer,
    parse_smtp_url,
)
from redis_urls import redis_client
from scripts.devservices import free_port
from tests.support import Mailbox


def message(to: str, subject: str = "Hello") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "Maycole <no-reply@maycole.local>"
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content("plain text body")
    msg.add_alternative("<p>html <b>body</b></p>", subtype="html")
    return msg


@pytest.fixture
def circuit_name() -> Iterator[str]:
    """A breaker name of its own, so this test never opens the app's `smtp` circuit."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    yield name
    keys = list(redis.client.scan_iter(f"breaker:{name}:*"))
    if keys:
        redis.client.delete(*keys)


def own_breaker(name: str, fail_max: int = 3) -> pybreaker.CircuitBreaker:
    return build_breaker(name, client=redis.client, fail_max=fail_max, reset_seconds=30)


def mailer_for(url: str, circuit: pybreaker.CircuitBreaker, timeout: float = 2) -> SmtpMailer:
    return SmtpMailer(parse_smtp_url(url), timeout=timeout, circuit=circuit)


class Rejecting:
    """aiosmtpd handler that refuses one recipient with 550 and keeps everything else."""

    def __init__(self, refused: str) -> None:
        self.refused = refused
        self.received: list[bytes] = []

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if address == self.refused:
            return "550 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.append(envelope.content)
        return "250 Message accepted for delivery"


@contextmanager
def tcp_server(*, greet: bool) -> Iterator[dict[str, int]]:
    """A TCP listener that counts connections and hangs up at once (or, without `greet`,
    says nothing at all, like a server stuck before its greeting)."""
    stats = {"port": 0, "connections": 0}
    listener = socket.create_server(("127.0.0.1", 0))
    stats["port"] = listener.getsockname()[1]
    held: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            stats["connections"] += 1
            if greet:
                conn.close()
            else:
                held.append(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield stats
    finally:
        listener.close()
        for conn in held:
            conn.close()


def test_mailer_delivers_text_and_html_parts(app: APIFlask, mailbox: Mailbox) -> None:
    mailer = get_mailer()
    assert mailer.circuit is breaker("smtp")  # the app's mail goes through the shared circuit
    mailer.send(message("ada@example.com", "Multipart check"))

    received = mailbox.wait_for("ada@example.com", "Multipart check")
    assert received.get_content_type() == "multipart/alternative"
    assert Mailbox.text_of(received).strip() == "plain text body"
    html = received.get_body(preferencelist=("html",))
    assert html is not None and "<b>body</b>" in str(html.get_content())


def test_smtp_urls_choose_tls_and_keep_the_password_out_of_logs() -> None:
    implicit = parse_smtp_url("smtps://mailer:p%40ss%2Fword@smtp.example.com")
    assert (implicit.host, implicit.port, implicit.implicit_tls) == ("smtp.example.com", 465, True)
    assert (implicit.username, implicit.password) == ("mailer", "p@ss/word")
    assert "p@ss" not in repr(implicit)

    upgrade = parse_smtp_url("smtp://u:p@smtp.example.com:587?starttls=true")
    assert (upgrade.port, upgrade.starttls, upgrade.implicit_tls) == (587, True, False)

    plain = parse_smtp_url("smtp://127.0.0.1:1025")
    assert (plain.port, plain.uses_tls, plain.username) == (1025, False, None)
    assert parse_smtp_url("smtp://mail.local").port == 25

    for bad in ("http://mail.local", "smtp://", "smtps://mail.local?starttls=true"):
        with pytest.raises(ValueError, match="SMTP_URL") as excinfo:
            parse_smtp_url(bad)
        assert "p@ss" not in str(excinfo.value)


def test_tls_urls_never_fall_back_to_plain_text(
    app: APIFlask, mailbox: Mailbox, circuit_name: str
) -> None:
    # The test server speaks plain SMTP only: STARTTLS is not offered, and a TLS handshake
    # fails. Either way the message must not go out unencrypted.
    port = mailbox.url.rsplit(":", 1)[1]
    circuit = own_breaker(circuit_name, fail_max=10)
    for url in (f"smtp://127.0.0.1:{port}?starttls=true", f"smtps://127.0.0.1:{port}"):
        with pytest.raises(TransientMailError):
            mailer_for(url, circuit).send(message("tls@example.com"))
    assert mailbox.to("tls@example.com") == []


def test_refused_connection_is_transient_and_fails_within_the_timeout(
    app: APIFlask, circuit_name: str
) -> None:
    mailer = mailer_for(f"smtp://127.0.0.1:{free_port()}", own_breaker(circuit_name), timeout=1)
    began = time.monotonic()
    with pytest.raises(TransientMailError, match="ConnectionRefusedError"):
        mailer.send(message("nobody@example.com"))
    assert time.monotonic() - began < 1


def test_a_server_that_never_answers_times_out(app: APIFlask, circuit_name: str) -> None:
    with tcp_server(greet=False) as server:
        mailer = mailer_for(f"smtp://127.0.0.1:{server['port']}", own_breaker(circuit_name), 0.5)
        began = time.monotonic()
        with pytest.raises(TransientMailError):
            mailer.send(message("nobody@example.com"))
        assert 0.4 < time.monotonic() - began < 2


def test_a_refused_recipient_is_permanent_and_does_not_trip_the_breaker(
    app: APIFlask, circuit_name: str
) -> None:
    handler = Rejecting("ghost@example.com")
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        circuit = own_breaker(circuit_name, fail_max=1)
        mailer = mailer_for(f"smtp://127.0.0.1:{controller.port}", circuit)
        with pytest.raises(PermanentMailError, match="550 no such user"):
            mailer.send(message("ghost@example.com"))
        # The server is healthy: with fail_max=1 a counted failure would have opened it.
        assert circuit.current_state == "closed"
        mailer.send(message("alive@example.com"))
    finally:
        controller.stop()
    assert len(handler.received) == 1 and b"alive@example.com" in handler.received[0]


def test_breaker_opens_after_fail_max_then_fails_fast_for_every_process(
    app: APIFlask, settings: Settings, circuit_name: str
) -> None:
    first = own_breaker(circuit_name, fail_max=3)
    with tcp_server(greet=True) as server:  # accepts, then hangs up: a broken SMTP server
        mailer = mailer_for(f"smtp://127.0.0.1:{server['port']}", first)
        for _ in range(3):
            with pytest.raises(TransientMailError):
                mailer.send(message("someone@example.com"))
        assert server["connections"] == 3
        assert first.current_state == "open"

        began = time.monotonic()
        with pytest.raises(TransientMailError, match="circuit open"):
            mailer.send(message("someone@example.com"))
        assert time.monotonic() - began < 0.1
        assert server["connections"] == 3  # failed fast: no connection was attempted

    # Another worker's breaker (its own object and Redis connection, which even decodes
    # responses) sees the open circuit too and refuses without calling.
    other_client = redis_client(
        settings.redis_url, settings.redis_sentinel_master, decode_responses=True
    )
    second = build_breaker(circuit_name, client=other_client, fail_max=3, reset_seconds=30)
    calls: list[int] = []
    with pytest.raises(pybreaker.CircuitBreakerError):
        second.call(lambda: calls.append(1))
    assert second.current_state == "open" and calls == []
    other_client.close()


def test_breaker_keeps_working_in_memory_when_redis_is_down() -> None:
    dead_redis = redis_lib.Redis(
        port=free_port(), socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)
    )
    storage = FallbackStorage("redis-down", dead_redis, retry_seconds=60)
    circuit = build_breaker(
        "redis-down", client=dead_redis, fail_max=2, reset_seconds=30, storage=storage
    )
    assert circuit.call(lambda: "sent") == "sent"  # the caller is not hurt by the outage
    assert not storage.uses_redis

    def broken() -> None:
        raise ConnectionResetError("smtp down")

    with pytest.raises(ConnectionResetError):
        circuit.call(broken)
    with pytest.raises(pybreaker.CircuitBreakerError):
        circuit.call(broken)
    # ...and it still protects: open in this process's memory, failing fast.
    with pytest.raises(pybreaker.CircuitBreakerError):
        circuit.call(lambda: "sent")
