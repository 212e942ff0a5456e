"""RabbitMQ as Celery's broker: the reachable server for `BROKER=rabbitmq make run|test`,
and a private node (`RabbitMQNode`) for the fault suite, which must restart and crash it.

For make run and make test RabbitMQ is not started here (it needs Erlang, and a developer
who asks for it runs one): the one at RABBITMQ_URL (default: guest on 127.0.0.1:5672, the
default vhost) must answer, and becomes CELERY_BROKER_URL.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

from scripts.dev_server import HOST, Server, free_port, port_open, say

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


RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"  # Debian's, without the su wrapper


class RabbitMQNode(Server):
    """A RabbitMQ node of our own on 127.0.0.1:port (Debian's rabbitmq-server package):
    its own node name, distribution port, Erlang cookie, config and data under
    ``workdir/rabbitmq``, so it can be stopped, SIGKILLed or wiped without touching the
    machine's RabbitMQ. No plugins: the fault suite needs AMQP only.

    `stop()` is a clean shutdown (the script forwards SIGTERM to the node), `kill()` a crash
    of the whole Erlang VM, `wipe()` a node that comes back with no data at all.
    """

    name = "rabbitmq"

    def __init__(self, port: int, workdir: Path) -> None:
        super().__init__(port, workdir)
        self.home = self.workdir / "rabbitmq"
        self.node = f"maycole-{port}@localhost"
        self.dist_port = free_port()

    @staticmethod
    def available() -> bool:
        return Path(RABBITMQ_SERVER).is_file()

    def _prepare(self, log: IO[bytes]) -> tuple[list[str], pwd.struct_passwd | None]:
        if not self.available():
            raise RuntimeError(f"{RABBITMQ_SERVER} not found (Debian: apt install rabbitmq-server)")
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "rabbitmq.conf").write_text(f"listeners.tcp.default = {HOST}:{self.port}\n")
        (self.home / "enabled_plugins").write_text("[].\n")
        (self.home / "rabbitmq-env.conf").write_text("")  # not the machine's node settings
        return [RABBITMQ_SERVER], None

    def _env(self) -> dict[str, str]:
        """What the node and `rabbitmqctl -n NODE` need (the cookie lives in HOME)."""
        home = str(self.home)
        return {
            **os.environ,
            "HOME": home,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONF_ENV_FILE": f"{home}/rabbitmq-env.conf",
            "RABBITMQ_CONFIG_FILE": f"{home}/rabbitmq.conf",
            "RABBITMQ_ENABLED_PLUGINS_FILE": f"{home}/enabled_plugins",
            "RABBITMQ_MNESIA_BASE": f"{home}/mnesia",
            "RABBITMQ_LOG_BASE": f"{home}/log",
            "RABBITMQ_PLUGINS_EXPAND_DIR": f"{home}/plugins-expand",
            "ERL_EPMD_ADDRESS": HOST,
        }

    def _ready(self) -> bool:
        # The AMQP listener opens last, once every boot step (queues recovered) is done.
        return port_open(self.port)

    def wipe(self) -> None:
        """Remove the node's data (stopped first): its queues and messages are gone."""
        self.kill()
        shutil.rmtree(self.home / "mnesia", ignore_errors=True)

    def url(self) -> str:
        return f"amqp://guest:guest@{HOST}:{self.port}//"
