"""The `uploads.process` job: verify an uploaded file before anyone may download it.

The job trusts nothing it was told: it checks the stored size against the declared one,
hashes the bytes, sniffs the real type and, for a mismatch, deletes the object and marks
the file `rejected`. Good files become `ready` (with a thumbnail for images and a search
document for text).

The job writes the very bytes it hashed to `.../verified` and points `storage_key` there:
downloads, thumbnails and the recorded SHA-256 all come from that copy, which no upload
form can reach (a presigned S3 POST cannot be revoked, so the form's own object may be
replaced until it expires).
"""

from __future__ import annotations

import codecs
import hashlib
import io
import tempfile
import uuid
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

import filetype
from PIL import Image, UnidentifiedImageError

from integrations.storage import ObjectStorage, StorageUnavailable
from models.file import UserFile
from services.core.audit import record_audit
from services.files.uploads import SUBJECT_TYPE, VERIFIED, locked_upload, object_key
from services.insights import search
from services.jobs import names
from services.jobs.outbox import enqueue

TEXT_TYPES = frozenset({"text/csv", "text/plain"})
THUMBNAIL_PX = 256
SEARCH_TEXT_BYTES = 64 * 1024
# Sniffing needs only the first bytes (filetype reads at most 8 KiB).
SNIFF_BYTES = 8192
# Images above this many pixels are refused instead of decoded: a tiny PNG can declare
# 100k x 100k pixels and exhaust a worker's memory (a "decompression bomb"). Pillow warns
# above this limit and raises above twice it; the warning is turned into an error below.
Image.MAX_IMAGE_PIXELS = 40_000_000
# Up to this size the bytes stay in memory while verified; larger ones spill to disk.
SPOOL_BYTES = 8 * 1024 * 1024


class _Rejected(Exception):
    """The stored bytes are not what was declared (the reason is shown to the user)."""


def process_upload(file_id: uuid.UUID, storage: ObjectStorage) -> dict[str, Any]:
    """The `uploads.process` job body; idempotent (only a `processing` file is handled).

    StorageUnavailable propagates, so the job retries with backoff.
    """
    row = locked_upload(file_id)
    if row is None or row.state != "processing":
        return {"state": row.state if row else "missing"}
    try:
        result = _verify(row, storage)
    except _Rejected as exc:
        row.state, row.rejection_reason = "rejected", str(exc)
        # The object goes at once: an unverified file must never be downloadable, and its
        # owner cannot see it anyway. (If the commit below failed, the redelivery finds no
        # object and rejects the file again.)
        storage.delete(row.storage_key)
        record_audit("upload.rejected", actor_id=row.uploaded_by_id, team_id=row.team_id,
                     subject_type="file", subject_id=row.id, data={"reason": str(exc)})  # fmt: skip
        return {"state": "rejected", "reason": str(exc)}
    uploaded = row.storage_key
    row.state, row.sha256, row.ready_at = "ready", result.sha256, datetime.now(UTC)
    row.storage_key, row.thumbnail_key = result.storage_key, result.thumbnail_key
    if uploaded != row.storage_key:
        # Not deleted here: if this transaction failed to commit, the rerun reads it again.
        enqueue(names.UPLOADS_DELETE_OBJECT, args={"keys": [uploaded]}, team_id=row.team_id)
    if result.text is not None:
        _index_text(row, result.text)
    data = {"sha256": result.sha256, "thumbnail": bool(result.thumbnail_key)}
    record_audit("upload.ready", actor_id=row.uploaded_by_id, team_id=row.team_id,
                 subject_type="file", subject_id=row.id, data=data)  # fmt: skip
    return {"state": "ready", "sha256": result.sha256}


@dataclass(frozen=True)
class _Verified:
    sha256: str
    storage_key: str  # the verified copy
    thumbnail_key: str | None
    text: str | None


def _verify(row: UserFile, storage: ObjectStorage) -> _Verified:
    info = storage.head(row.storage_key)
    if info is None:
        raise _Rejected("The file was never uploaded.")
    if info.size != row.size:
        raise _Rejected(f"The file has {info.size} bytes, not the declared {row.size}.")
    digest, size = hashlib.sha256(), 0
    is_text = row.content_type in TEXT_TYPES
    decoder = codecs.getincrementaldecoder("utf-8")()
    text_parts: list[str] = []
    text_len = 0
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as spool:
        try:
            for chunk in storage.read(row.storage_key):
                digest.update(chunk)
                size += len(chunk)
                spool.write(chunk)
                if is_text:
                    if b"\x00" in chunk:
                        raise _Rejected("A text file must not contain NUL bytes.")
                    try:
                        decoded = decoder.decode(chunk)
                    except UnicodeDecodeError:
                        raise _Rejected("A text file must be valid UTF-8.") from None
                    if text_len < SEARCH_TEXT_BYTES:
                        text_parts.append(decoded[: SEARCH_TEXT_BYTES - text_len])
                        text_len += len(text_parts[-1])
            if is_text:
                try:
                    decoder.decode(b"", final=True)
                except UnicodeDecodeError:
                    raise _Rejected("A text file must be valid UTF-8.") from None
        except FileNotFoundError:
            raise _Rejected("The file was never uploaded.") from None
        if size != row.size:  # replaced between HEAD and GET
            raise _Rejected(f"The file has {size} bytes, not the declared {row.size}.")
        spool.seek(0)
        head = spool.read(SNIFF_BYTES)
        kind = filetype.guess(head)
        sniffed = kind.mime if kind else None
        if is_text:
            if sniffed is not None:
                raise _Rejected(f"The file is {sniffed}, not {row.content_type}.")
        elif sniffed != row.content_type:
            raise _Rejected(
                f"The file is {sniffed or 'of an unknown type'}, not {row.content_type}."
            )
        thumbnail_key = None
        if row.content_type.startswith("image/"):
            spool.seek(0)
            png = _thumbnail(spool)
            thumbnail_key = object_key(row.team_id, row.id, "thumbnail.png")
            storage.write(thumbnail_key, [png], content_type="image/png")
        # The bytes just checked, not the form's object again (it may have changed since).
        spool.seek(0)
        verified_key = object_key(row.team_id, row.id, VERIFIED)
        stored = storage.write(
            verified_key, iter(lambda: spool.read(1024 * 1024), b""), content_type=row.content_type
        )
        if stored.sha256 != digest.hexdigest():
            raise StorageUnavailable(f"the verified copy of {row.id} differs; retrying")
    text = "".join(text_parts) if is_text else None
    return _Verified(
        sha256=digest.hexdigest(), storage_key=verified_key, thumbnail_key=thumbnail_key,
        text=text,
    )  # fmt: skip


def _thumbnail(source: IO[bytes]) -> bytes:
    """A PNG at most THUMBNAIL_PX on its longer side; refuses decompression bombs."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as opened:
                opened.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
                image: Image.Image = opened
                if image.mode not in ("RGB", "RGBA", "L", "LA", "P"):
                    image = image.convert("RGBA")  # PNG cannot store e.g. CMYK
                out = io.BytesIO()
                image.save(out, format="PNG", optimize=True)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _Rejected("The image has too many pixels to process.") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise _Rejected(f"The image cannot be decoded: {exc}") from None
    return out.getvalue()


def _index_text(row: UserFile, text: str) -> None:
    """Upsert the file's search document (to_tsvector('simple'): no language guessing)."""
    search.index_document(row.team_id, SUBJECT_TYPE, row.id, row.filename, text)
