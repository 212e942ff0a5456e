"""What the tests stand on, one module per idea, every name importable from here.

- paths: ROOT, and LOGS (this test process's log folder)
- settings: make_settings, settings_env, TEST_OVERRIDES, PRODUCTION_REQUIRED
- polling: wait_for, fetch_job, wait_job
- workers: Worker, running_worker (real Celery worker processes)
- http_helpers: problem_body, bearer
- database: truncate_all_tables, other_connection, own_engine
- servers, one a module: mailbox (Mailbox, aiosmtpd), stripe (LocalStripe), s3 (MotoS3),
  web (WebServer, gunicorn), redis_server (private_redis), proxy (SlowProxy),
  redis_sentinel (sentinel_redis: a master, a replica and three sentinels)
- ports: free_port, refused
- stack: PrivateStack(s), what the `private_stack` fixture builds
"""

from tests.support.database import other_connection, own_engine, truncate_all_tables
from tests.support.http_helpers import bearer, problem_body
from tests.support.mailbox import Mailbox
from tests.support.paths import LOGS, ROOT
from tests.support.polling import fetch_job, wait_for, wait_job
from tests.support.ports import free_port, refused
from tests.support.proxy import SlowProxy
from tests.support.redis_sentinel import sentinel_redis
from tests.support.redis_server import private_redis
from tests.support.s3 import MotoS3
from tests.support.settings import (
    PRODUCTION_REQUIRED,
    TEST_OVERRIDES,
    make_settings,
    settings_env,
)
from tests.support.stack import PrivateStack, PrivateStacks
from tests.support.stripe import LocalStripe
from tests.support.web import WebServer
from tests.support.workers import Worker, running_worker

__all__ = [
    "LOGS",
    "PRODUCTION_REQUIRED",
    "ROOT",
    "TEST_OVERRIDES",
    "LocalStripe",
    "Mailbox",
    "MotoS3",
    "PrivateStack",
    "PrivateStacks",
    "SlowProxy",
    "WebServer",
    "Worker",
    "bearer",
    "fetch_job",
    "free_port",
    "make_settings",
    "other_connection",
    "own_engine",
    "private_redis",
    "problem_body",
    "refused",
    "running_worker",
    "sentinel_redis",
    "settings_env",
    "truncate_all_tables",
    "wait_for",
    "wait_job",
]
