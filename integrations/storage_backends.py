"""`get_storage()`: the app's `ObjectStorage` as STORAGE_BACKEND says, S3
(integrations/storage_s3.py) or the local filesystem (integrations/storage_local.py).
"""

from __future__ import annotations

import threading

from flask import current_app

from config import Settings
from integrations.breaker import breaker
from integrations.storage import ObjectStorage
from integrations.storage_local import LocalStorage
from integrations.storage_s3 import S3Storage, s3_client

_ensured: set[tuple[str, str]] = set()
_lock = threading.Lock()


def build_storage(settings: Settings) -> ObjectStorage:
    """The storage `settings` describe (no app context needed, no breaker)."""
    if settings.storage_backend == "s3":
        return S3Storage(s3_client(settings), settings.s3_bucket)
    return LocalStorage(
        settings.storage_local_dir,
        secret_key=settings.secret_key,
        base_url=settings.public_api_url,
    )


def get_storage() -> ObjectStorage:
    """The app's object storage (STORAGE_BACKEND), S3 guarded by the shared `s3` breaker.

    In development and tests a missing S3 bucket is created on first use, so MinIO/moto
    work out of the box; production buckets are provisioned, never created by the app.
    """
    settings: Settings = current_app.config["SETTINGS"]
    if settings.storage_backend != "s3":
        return build_storage(settings)
    storage = S3Storage(s3_client(settings), settings.s3_bucket, circuit=breaker("s3"))
    marker = (settings.s3_endpoint_url, settings.s3_bucket)
    if settings.app_env != "production" and marker not in _ensured:
        storage.ensure_bucket(settings.s3_region)
        with _lock:
            _ensured.add(marker)
    return storage
