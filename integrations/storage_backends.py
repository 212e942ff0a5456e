"""The two `ObjectStorage` implementations (S3 and the local filesystem) and `get_storage()`.

`S3Storage` talks to S3 (or MinIO/moto/localstack via S3_ENDPOINT_URL) with boto3: every
call has a connect and a read timeout, botocore's own retries are minimal (our task layer
retries with backoff instead), and calls go through the shared `s3` circuit breaker.
Failures of the store itself surface as `StorageUnavailable`; a missing object is
`FileNotFoundError` from `read`, `None` from `head`, and fine for `delete`.

`LocalStorage` keeps objects under STORAGE_LOCAL_DIR; its "presigned" URLs point at this
app (blueprints/storage_local.py) and carry an itsdangerous-signed token with the key, the
expiry, the maximum size and the content type, so the same browser flow works in
development without any S3.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

import boto3
import pybreaker
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from flask import current_app
from itsdangerous import BadSignature, URLSafeSerializer

from config import Settings
from integrations.breaker import breaker
from integrations.storage import (
    ObjectInfo,
    ObjectStorage,
    PresignedPost,
    StorageUnavailable,
    StoredObject,
)

T = TypeVar("T")

# S3 multipart parts must be >= 5 MiB (except the last); 8 MiB keeps memory bounded and the
# number of parts for our largest uploads small.
PART_SIZE = 8 * 1024 * 1024
UPLOAD_PATH = "/api/v1/storage/upload"
DOWNLOAD_PATH = "/api/v1/storage/download"
_UPLOAD_SALT = "storage-upload"
_DOWNLOAD_SALT = "storage-download"


def content_disposition(filename: str) -> str:
    """An `attachment` header value that survives any filename (RFC 6266 + RFC 5987)."""
    ascii_name = filename.encode("ascii", "replace").decode().replace('"', "'").replace("\\", "_")
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"


# ---------------------------------------------------------------------------------------------
# S3


class _ClientSide(Exception):
    """A 4xx answer: the store is healthy, so this must not count towards the breaker."""

    def __init__(self, error: ClientError) -> None:
        super().__init__(str(error))
        self.error = error


def _status(error: ClientError) -> int:
    return int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


class S3Storage:
    """`ObjectStorage` on an S3 bucket."""

    def __init__(
        self, client: Any, bucket: str, *, circuit: pybreaker.CircuitBreaker | None = None
    ) -> None:
        self.client, self.bucket, self.circuit = client, bucket, circuit

    def _call(self, fn: Callable[[], T]) -> T:
        """Run one S3 request: store failures -> StorageUnavailable, 4xx -> ClientError."""

        def guarded() -> T | _ClientSide:
            try:
                return fn()
            except ClientError as exc:
                if _status(exc) and _status(exc) < 500:
                    return _ClientSide(exc)  # returned, not raised: the store answered
                raise

        try:
            result = self.circuit.call(guarded) if self.circuit else guarded()
        except pybreaker.CircuitBreakerError as exc:
            cause = f"; last error: {exc.__context__}" if exc.__context__ else ""
            raise StorageUnavailable(f"S3 circuit open{cause}") from exc
        except (BotoCoreError, ClientError) as exc:
            raise StorageUnavailable(f"S3 unavailable: {type(exc).__name__}: {exc}") from exc
        if isinstance(result, _ClientSide):
            raise result.error
        return result

    def ensure_bucket(self, region: str) -> None:
        """Create the bucket if it does not exist (development and tests only)."""
        try:
            self._call(lambda: self.client.head_bucket(Bucket=self.bucket))
            return
        except ClientError as exc:
            if _status(exc) != 404:
                raise
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        if region != "us-east-1":  # us-east-1 refuses an explicit LocationConstraint
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self._call(lambda: self.client.create_bucket(**kwargs))
        except ClientError as exc:
            if _code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise

    def presigned_post(
        self, key: str, *, content_type: str, max_size: int, expires_in: int
    ) -> PresignedPost:
        """A form policy S3 itself enforces (type and size), signed locally (no request)."""
        post = self.client.generate_presigned_post(
            Bucket=self.bucket,
            Key=key,
            Fields={"Content-Type": content_type},
            Conditions=[
                {"Content-Type": content_type},
                ["content-length-range", 1, max_size],
            ],
            ExpiresIn=expires_in,
        )
        fields = {str(k): str(v) for k, v in post["fields"].items()}
        return PresignedPost(url=str(post["url"]), fields=fields, expires_in=expires_in)

    def presigned_get(self, key: str, *, expires_in: int, filename: str | None = None) -> str:
        """A signed GET URL (no request); with `filename`, the browser saves it as that."""
        params: dict[str, str] = {"Bucket": self.bucket, "Key": key}
        if filename:
            params["ResponseContentDisposition"] = content_disposition(filename)
        url = self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=expires_in)
        return str(url)

    def head(self, key: str) -> ObjectInfo | None:
        """Size and type, or None for a missing object."""
        try:
            meta = self._call(lambda: self.client.head_object(Bucket=self.bucket, Key=key))
        except ClientError as exc:
            if _status(exc) == 404:
                return None
            raise
        return ObjectInfo(size=int(meta["ContentLength"]), content_type=meta.get("ContentType"))

    def read(self, key: str, chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
        """Stream the object; FileNotFoundError if it does not exist."""
        try:
            obj = self._call(lambda: self.client.get_object(Bucket=self.bucket, Key=key))
        except ClientError as exc:
            if _code(exc) in ("NoSuchKey", "404") or _status(exc) == 404:
                raise FileNotFoundError(key) from exc
            raise
        body = obj["Body"]
        try:
            yield from body.iter_chunks(chunk_size)
        except (BotoCoreError, OSError) as exc:
            # A connection dropped mid-stream: the caller retries the whole read.
            raise StorageUnavailable(f"S3 read of {key} failed: {exc}") from exc
        finally:
            body.close()

    def write(self, key: str, chunks: Iterable[bytes], *, content_type: str) -> StoredObject:
        """One put_object below PART_SIZE, else a multipart upload that is aborted on any
        failure, so a half-written object never becomes visible under `key`."""
        digest, size = hashlib.sha256(), 0
        buffer = bytearray()
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []

        def flush_part(data: bytes) -> None:
            number = len(parts) + 1
            answer = self._call(
                lambda: self.client.upload_part(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=data,
                )
            )
            parts.append({"ETag": answer["ETag"], "PartNumber": number})

        try:
            for chunk in chunks:
                digest.update(chunk)
                size += len(chunk)
                buffer += chunk
                while len(buffer) >= PART_SIZE:
                    if upload_id is None:
                        created = self._call(
                            lambda: self.client.create_multipart_upload(
                                Bucket=self.bucket, Key=key, ContentType=content_type
                            )
                        )
                        upload_id = str(created["UploadId"])
                    flush_part(bytes(buffer[:PART_SIZE]))
                    del buffer[:PART_SIZE]
            if upload_id is None:
                body = bytes(buffer)
                self._call(
                    lambda: self.client.put_object(
                        Bucket=self.bucket, Key=key, Body=body, ContentType=content_type
                    )
                )
            else:
                if buffer:
                    flush_part(bytes(buffer))
                self._call(
                    lambda: self.client.complete_multipart_upload(
                        Bucket=self.bucket,
                        Key=key,
                        UploadId=upload_id,
                        MultipartUpload={"Parts": parts},
                    )
                )
        except BaseException:
            if upload_id is not None:
                aborted_id = upload_id
                # S3 lifecycle rules remove abandoned parts; the original error wins.
                with contextlib.suppress(BotoCoreError, ClientError):
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=key, UploadId=aborted_id
                    )
            raise
        return StoredObject(key=key, size=size, sha256=digest.hexdigest())

    def delete(self, key: str) -> None:
        """Delete; S3 answers 204 for a missing key too."""
        self._call(lambda: self.client.delete_object(Bucket=self.bucket, Key=key))


_clients: dict[tuple[str, str, float], Any] = {}
_ensured: set[tuple[str, str]] = set()
_lock = threading.Lock()


def s3_client(settings: Settings) -> Any:
    """One boto3 client per endpoint/region/timeout (clients are thread-safe; slow to build)."""
    cache_key = (settings.s3_endpoint_url, settings.s3_region, settings.s3_timeout_seconds)
    with _lock:
        client = _clients.get(cache_key)
        if client is None:
            config = Config(
                connect_timeout=settings.s3_timeout_seconds,
                read_timeout=settings.s3_timeout_seconds,
                # One attempt: tasks retry with backoff and the breaker counts failures; a
                # hidden retry loop here would multiply the timeout.
                retries={"max_attempts": 1, "mode": "standard"},
                signature_version="s3v4",
                # Path-style URLs work with any endpoint (moto, MinIO) without DNS tricks.
                s3={"addressing_style": "path"} if settings.s3_endpoint_url else {},
            )
            client = boto3.session.Session().client(
                "s3",
                endpoint_url=settings.s3_endpoint_url or None,
                region_name=settings.s3_region,
                config=config,
            )
            _clients[cache_key] = client
    return client


# ---------------------------------------------------------------------------------------------
# Local filesystem


class TokenExpired(Exception):
    """A correctly signed upload/download token whose time is over (HTTP 410)."""


class TokenInvalid(Exception):
    """A token that was not signed by us or not for this purpose (HTTP 403)."""


@dataclass(frozen=True)
class UploadGrant:
    key: str
    content_type: str
    max_size: int


@dataclass(frozen=True)
class DownloadGrant:
    key: str
    filename: str | None


class LocalStorage:
    """`ObjectStorage` in a directory; URLs are signed links to this app."""

    def __init__(self, root: str | Path, *, secret_key: str, base_url: str) -> None:
        self.root = Path(root).resolve()
        self.base_url = base_url.rstrip("/")
        self._upload = URLSafeSerializer(secret_key, salt=_UPLOAD_SALT)
        self._download = URLSafeSerializer(secret_key, salt=_DOWNLOAD_SALT)

    def _path(self, key: str) -> Path:
        """The file for `key`; keys are ours, but never let one escape the root."""
        path = (self.root / "objects" / key).resolve()
        if not path.is_relative_to(self.root / "objects") or key.endswith("/"):
            raise ValueError(f"invalid storage key {key!r}")
        return path

    def _meta_path(self, key: str) -> Path:
        path = self._path(key)
        return path.with_name(path.name + ".meta.json")

    def presigned_post(
        self, key: str, *, content_type: str, max_size: int, expires_in: int
    ) -> PresignedPost:
        """A form for POST /api/v1/storage/upload with one signed `token` field."""
        self._path(key)
        token = self._upload.dumps(
            {"k": key, "t": content_type, "m": max_size, "x": int(time.time()) + expires_in}
        )
        return PresignedPost(
            url=self.base_url + UPLOAD_PATH, fields={"token": token}, expires_in=expires_in
        )

    def presigned_get(self, key: str, *, expires_in: int, filename: str | None = None) -> str:
        """A link to GET /api/v1/storage/download?token=..."""
        self._path(key)
        token = self._download.dumps({"k": key, "f": filename, "x": int(time.time()) + expires_in})
        return f"{self.base_url}{DOWNLOAD_PATH}?{urlencode({'token': token})}"

    @staticmethod
    def _check(serializer: URLSafeSerializer, token: str) -> dict[str, Any]:
        try:
            data = serializer.loads(token)
        except BadSignature as exc:
            raise TokenInvalid("invalid token") from exc
        if not isinstance(data, dict) or not isinstance(data.get("k"), str):
            raise TokenInvalid("invalid token")
        if time.time() > float(data.get("x", 0)):
            raise TokenExpired("token expired")
        return data

    def verify_upload(self, token: str) -> UploadGrant:
        """What an upload token allows, or TokenInvalid/TokenExpired."""
        data = self._check(self._upload, token)
        return UploadGrant(key=data["k"], content_type=str(data["t"]), max_size=int(data["m"]))

    def verify_download(self, token: str) -> DownloadGrant:
        """What a download token allows, or TokenInvalid/TokenExpired."""
        data = self._check(self._download, token)
        filename = data.get("f")
        return DownloadGrant(key=data["k"], filename=str(filename) if filename else None)

    def local_path(self, key: str) -> Path:
        """The file holding `key` (for send_file)."""
        return self._path(key)

    def head(self, key: str) -> ObjectInfo | None:
        """Size and type, or None for a missing object."""
        path = self._path(key)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return None
        content_type: str | None = None
        # An object written by hand has no metadata; its type is then unknown.
        with contextlib.suppress(OSError, ValueError, KeyError):
            content_type = json.loads(self._meta_path(key).read_text())["content_type"]
        return ObjectInfo(size=size, content_type=content_type)

    def read(self, key: str, chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
        """Stream the file; FileNotFoundError if it does not exist."""
        with self._path(key).open("rb") as fh:
            while chunk := fh.read(chunk_size):
                yield chunk

    def write(self, key: str, chunks: Iterable[bytes], *, content_type: str) -> StoredObject:
        """Write to a temporary file in the same directory, then rename it into place:
        readers see either the old object, nothing, or the whole new one."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        digest, size = hashlib.sha256(), 0
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as fh:
                for chunk in chunks:
                    digest.update(chunk)
                    size += len(chunk)
                    fh.write(chunk)
                fh.flush()
                os.fsync(fh.fileno())
            self._write_meta(key, content_type)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return StoredObject(key=key, size=size, sha256=digest.hexdigest())

    def _write_meta(self, key: str, content_type: str) -> None:
        meta = self._meta_path(key)
        fd, tmp = tempfile.mkstemp(dir=meta.parent, prefix=".meta-")
        with os.fdopen(fd, "w") as fh:
            json.dump({"content_type": content_type}, fh)
        os.replace(tmp, meta)

    def delete(self, key: str) -> None:
        """Remove the file and its metadata; a missing one is fine."""
        self._path(key).unlink(missing_ok=True)
        self._meta_path(key).unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# Factory


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
