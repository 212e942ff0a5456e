"""`ObjectStorage` in a local directory (STORAGE_LOCAL_DIR), for development and tests.

Its "presigned" URLs point at this app (blueprints/storage_local.py) and carry an
itsdangerous-signed token with the key, the expiry, the maximum size and the content type
(an `UploadGrant` or `DownloadGrant` once verified), so the same browser flow works
without any S3.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from itsdangerous import BadSignature, URLSafeSerializer

from integrations.storage import ObjectInfo, PresignedPost, StoredObject

UPLOAD_PATH = "/api/v1/storage/upload"
DOWNLOAD_PATH = "/api/v1/storage/download"
_UPLOAD_SALT = "storage-upload"
_DOWNLOAD_SALT = "storage-download"


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
            {"k": key, "t": content_type, "m": max_size, "x": _expiry(expires_in)}
        )
        return PresignedPost(
            url=self.base_url + UPLOAD_PATH, fields={"token": token}, expires_in=expires_in
        )

    def presigned_get(self, key: str, *, expires_in: int, filename: str | None = None) -> str:
        """A link to GET /api/v1/storage/download?token=..."""
        self._path(key)
        token = self._download.dumps({"k": key, "f": filename, "x": _expiry(expires_in)})
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


def _expiry(expires_in: int) -> float:
    """When a token made now stops working: `expires_in` seconds from now, to the
    millisecond. Whole seconds (truncated) made a 1-s link last anywhere from 0 to 1 s."""
    return round(time.time() + expires_in, 3)
