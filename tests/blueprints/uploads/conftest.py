"""Fixtures of the upload tests: a broker of the module's own (the session worker would
process our jobs with local storage).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from apiflask import APIFlask

from config import Settings
from scripts.devservices import RedisServer
from tests.blueprints.uploads.helpers import BUCKET, _base
from tests.support import (
    LOGS,
    MotoS3,
    PrivateStacks,
    Worker,
    make_settings,
    private_redis,
    running_worker,
)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A broker of this module's own, so the session worker never takes our jobs (it would
    process them with local storage)."""
    with private_redis(tmp_path_factory.mktemp("uploads-broker")) as server:
        yield server


@pytest.fixture(scope="module")
def s3_settings(settings: Settings, s3_server: MotoS3, broker: RedisServer) -> Settings:
    return make_settings(
        **_base(settings), storage_backend="s3", s3_endpoint_url=s3_server.url,
        s3_bucket=BUCKET, celery_broker_url=broker.url(0),
    )  # fmt: skip


@pytest.fixture(scope="module")
def s3_worker(s3_settings: Settings, app: APIFlask) -> Iterator[Worker]:
    with running_worker(s3_settings, LOGS / "uploads-s3-worker.log") as worker:
        yield worker


@pytest.fixture
def s3_app(s3_settings: Settings, s3_worker: Worker, private_stack: PrivateStacks) -> APIFlask:
    return private_stack(base=s3_settings).app


@pytest.fixture
def s3(s3_server: MotoS3) -> Any:
    """A plain boto3 client to look inside the bucket."""
    return boto3.client("s3", endpoint_url=s3_server.url, region_name="us-east-1")
