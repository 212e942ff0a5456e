"""A private stack: an app (and Celery producer) on settings of a test's own, with a
broker or Redis of its own if asked, and workers on it. The `private_stack` fixture
(tests/conftest.py) builds these and puts the session's app globals back afterwards.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from apiflask import APIFlask
from flask.testing import FlaskClient

from app import create_app
from config import Settings
from scripts.devservices import RedisServer, free_port
from tests.support.paths import LOGS
from tests.support.rabbitmq import RabbitVhost
from tests.support.settings import make_settings
from tests.support.workers import Worker, running_worker


@dataclass
class PrivateStack:
    """Settings, the app built on them (the extensions' globals follow it), and the
    private broker its Celery publishes to, if it has one (a Redis server, or a
    RabbitMQ vhost)."""

    settings: Settings
    app: APIFlask
    broker: RedisServer | None = None
    rabbitmq: RabbitVhost | None = None

    def client(self) -> FlaskClient:
        return self.app.test_client()

    def worker(self, log_name: str, concurrency: int = 2) -> AbstractContextManager[Worker]:
        """A real worker on these settings, logging to LOGS/<log_name>.log, while in use."""
        return running_worker(self.settings, LOGS / f"{log_name}.log", concurrency)


class PrivateStacks:
    """The `private_stack` fixture's value: call it to build a stack (as often as needed)."""

    def __init__(self, session: Settings, workdir: Path) -> None:
        self.session, self.workdir = session, workdir
        self.servers: list[RedisServer] = []
        self.vhosts: list[RabbitVhost] = []
        self.built = False

    def redis(self) -> RedisServer:
        """A started throwaway redis-server of this test's own, stopped at teardown."""
        server = RedisServer(free_port(), self.workdir / f"redis-{len(self.servers)}")
        server.start()
        self.servers.append(server)
        return server

    def rabbitmq(self) -> RabbitVhost:
        """A fresh vhost on the machine's RabbitMQ, deleted at teardown."""
        vhost = RabbitVhost().create()
        self.vhosts.append(vhost)
        return vhost

    def __call__(
        self,
        *,
        base: Settings | None = None,
        keep: Iterable[str] | Literal["all"] = (),
        broker: bool | RedisServer | Literal["rabbitmq"] = False,
        broker_db: int = 0,
        **changes: Any,
    ) -> PrivateStack:
        """Build an app on new settings and make it the current one.

        Without `base` the settings are `make_settings(**changes)` plus the session
        settings named in `keep` ("all": every one); with `base`, a copy of it with the
        changes. `broker=True` starts a broker of the stack's own, `broker=server` uses
        that one; either way at db `broker_db`, and no other worker takes its jobs.
        `broker="rabbitmq"` publishes to a RabbitMQ vhost of the stack's own instead.
        """
        vhost = self.rabbitmq() if broker == "rabbitmq" else None
        server = self.redis() if broker is True else broker or None
        if isinstance(server, str):
            server = None
        if server is not None:
            changes["celery_broker_url"] = server.url(broker_db)
        if vhost is not None:
            changes["celery_broker_url"] = vhost.url()
        if base is not None:
            settings = base.model_copy(update=changes) if changes else base
        else:
            kept = self.session.model_dump() if keep == "all" else {
                name: getattr(self.session, name) for name in keep
            }  # fmt: skip
            settings = make_settings(**{**kept, **changes})
        self.built = True
        return PrivateStack(settings, create_app(settings), server, vhost)

    def close(self) -> None:
        """Stop the servers, then put the session's app globals back."""
        while self.servers:
            self.servers.pop().stop()
        while self.vhosts:
            self.vhosts.pop().delete()
        if self.built:
            create_app(self.session)
