"""A RabbitMQ virtual host of a test's own on the machine's RabbitMQ.

RabbitMQ runs on this machine and in CI (RABBITMQ_URL, by default guest on 127.0.0.1:5672).
Each vhost is a broker of its own: queues, exchanges and messages never meet another
test's or another checkout's. `rabbitmqctl` creates and deletes it (the management
plugin may be off; the AMQP protocol cannot create vhosts).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from urllib.parse import quote, urlsplit, urlunsplit

from tests.support.settings import TEST_OVERRIDES

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"


def rabbitmq_url() -> str:
    """The machine's RabbitMQ (its default vhost)."""
    return os.environ.get("RABBITMQ_URL") or DEFAULT_URL


class RabbitVhost:
    """A fresh vhost, its user granted everything on it; `delete()` drops it and its data."""

    def __init__(self, prefix: str = "maycole-test") -> None:
        self.name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.base = urlsplit(rabbitmq_url())
        self.user = self.base.username or "guest"

    def create(self) -> RabbitVhost:
        _ctl("add_vhost", self.name)
        _ctl("set_permissions", "-p", self.name, self.user, ".*", ".*", ".*")
        return self

    def delete(self) -> None:
        _ctl("delete_vhost", self.name)

    def url(self) -> str:
        return urlunsplit(self.base._replace(path="/" + quote(self.name, safe="")))


def use_own_vhost() -> RabbitVhost | None:
    """With an AMQP CELERY_BROKER_URL (`BROKER=rabbitmq make test`): a fresh vhost of this
    test process (the xdist processes' session workers must not take each other's tasks)
    becomes the test settings' broker; the caller deletes it at the end. None on Redis.

    The variable itself leaves the environment: Celery prefers CELERY_BROKER_URL to its
    configured broker_url, and the private stacks need their own brokers to be used. The
    xdist worker processes learn it from MAYCOLE_TEST_BROKER and RABBITMQ_URL instead.
    """
    url = os.environ.get("CELERY_BROKER_URL", "")
    if urlsplit(url).scheme in ("amqp", "amqps", "pyamqp"):
        del os.environ["CELERY_BROKER_URL"]
        os.environ["RABBITMQ_URL"], os.environ["MAYCOLE_TEST_BROKER"] = url, "rabbitmq"
    if os.environ.get("MAYCOLE_TEST_BROKER") != "rabbitmq":
        return None
    vhost = RabbitVhost("maycole-suite").create()
    TEST_OVERRIDES["celery_broker_url"] = vhost.url()
    return vhost


def _ctl(*args: str) -> None:
    ctl = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    subprocess.run([ctl, "-q", *args], check=True, capture_output=True, timeout=60)
