"""`ObjectStorage` on S3 (or MinIO/moto/localstack via S3_ENDPOINT_URL), with boto3.

Every call has a connect and a read timeout, botocore's own retries are minimal (our task
layer retries with backoff instead), and calls go through the shared `s3` circuit
breaker. Failures of the store itself surface as `StorageUnavailable`; a missing object
is `FileNotFoundError` from `read`, `None` from `head`, and fine for `delete`. Writes
stream: one put below PART_SIZE, else a multipart upload.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar
from urllib.parse import quote

import boto3
import pybreaker
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from config import Settings
from integrations.storage import ObjectInfo, PresignedPost, StorageUnavailable, StoredObject

T = TypeVar("T")

# S3 multipart parts must be >= 5 MiB (except the last); 8 MiB keeps memory bounded and the
# number of parts for our largest uploads small.
PART_SIZE = 8 * 1024 * 1024


def content_disposition(filename: str) -> str:
    """An `attachment` header value that survives any filename (RFC 6266 + RFC 5987)."""
    ascii_name = filename.encode("ascii", "replace").decode().replace('"', "'").replace("\\", "_")
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"


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
