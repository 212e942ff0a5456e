"""RabbitMQ as Celery's broker for `BROKER=rabbitmq make run|test`: a reachable server only.

Unlike PostgreSQL and Redis, RabbitMQ is not started here (it needs Erlang and a node of
its own): the one at RABBITMQ_URL (default: guest on 127.0.0.1:5672, the default vhost)
must answer, and becomes CELERY_BROKER_URL.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

from scripts.dev_server import say

DEFAULT_RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"


def ensure_rabbitmq() -> str:
    """The reachable RabbitMQ's URL; RuntimeError (a readable message) if none answers."""
    url = os.environ.get("RABBITMQ_URL") or DEFAULT_RABBITMQ_URL
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 5672
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError:
        raise RuntimeError(
            f"BROKER=rabbitmq: no RabbitMQ answers at {host}:{port}; start one "
            "(e.g. `rabbitmq-server`, or a container) or set RABBITMQ_URL"
        ) from None
    say(f"rabbitmq: found at {host}:{port} (CELERY_BROKER_URL)")
    return url
