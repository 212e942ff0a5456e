"""Uploads: presign, serve through presigned links, delete, clean up.

Bytes never pass through the web process. A browser asks for a presigned form (the file
row starts `pending`), posts the file straight to the store, then calls `complete`
(`processing` + the `uploads.process` job, whose verification is in
upload_verification.py). Object keys are always `teams/{team_id}/uploads/{file_id}/...`,
never derived from user input.

The form's key (`.../original`) is only ever the browser's upload. A presigned S3 POST
cannot be revoked, so a second post with the same form (until it expires) would replace
the bytes after they were checked: the job serves its own verified copy instead (see
upload_verification.py). The local backend's upload link goes further and is refused once
the file is no longer `pending`.
"""

from __future__ import annotations

import unicodedata
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import current_app
from sqlalchemy import select

from config import Settings
from extensions import db
from integrations.storage import ObjectStorage, StorageUnavailable
from integrations.storage_backends import get_storage
from models import Job, User
from models.file import UserFile
from services.core import permissions
from services.core.audit import record_audit
from services.core.errors import (
    Conflict,
    DependencyUnavailable,
    Forbidden,
    NotFound,
    ValidationFailed,
)
from services.core.pagination import Page, paginate
from services.insights import search
from services.jobs import names
from services.jobs.outbox import enqueue

SUBJECT_TYPE = "file"
# A file's objects: what the browser's form posted (it may post again until the form
# expires) and the copy of the bytes the job verified (what downloads serve).
UPLOADED = "original"
VERIFIED = "verified"


@dataclass(frozen=True)
class UploadTicket:
    """What the browser needs to send the bytes: a form for the store."""

    url: str
    fields: dict[str, str]
    expires_at: datetime


def _settings() -> Settings:
    settings: Settings = current_app.config["SETTINGS"]
    return settings


def _storage() -> ObjectStorage:
    try:
        return get_storage()
    except StorageUnavailable as exc:
        raise DependencyUnavailable("File storage is unavailable; try again shortly.") from exc


def sanitize_filename(name: str) -> str:
    """A readable, safe display name: no directories, no control characters, <= 255."""
    name = unicodedata.normalize("NFC", name)
    name = name.replace("\\", "/").rsplit("/", 1)[-1]  # "C:\\x\\a.png" and "../a.png" -> "a.png"
    # Cc: control characters (NUL, newlines, ESC); Cf: invisible format characters such as
    # RIGHT-TO-LEFT OVERRIDE, which can disguise "gpj.exe" as "exe.jpg".
    name = "".join(" " if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") else c for c in name)
    name = " ".join(name.split()).strip(" .")
    if not name:
        return "file"
    if len(name) > 255:
        stem, dot, ext = name.rpartition(".")
        # Keep a short extension readable; cut the stem instead.
        keep_ext = bool(dot) and 0 < len(ext) <= 16
        name = stem[: 255 - len(ext) - 1] + "." + ext if keep_ext else name[:255]
    return name


def object_key(team_id: uuid.UUID, file_id: uuid.UUID, name: str = UPLOADED) -> str:
    """The storage key of one of a file's objects (ours only)."""
    return f"teams/{team_id}/uploads/{file_id}/{name}"


def create_upload(
    user: User, team_id: uuid.UUID, *, filename: str, content_type: str, size: int
) -> tuple[UserFile, UploadTicket]:
    """Record a pending file and presign a form for its bytes. One transaction."""
    settings = _settings()
    content_type = content_type.strip().lower()
    if content_type not in settings.upload_type_allow_list:
        raise ValidationFailed(
            "This file type is not accepted.",
            errors={
                "content_type": [f"Accepted: {', '.join(sorted(settings.upload_type_allow_list))}."]
            },
        )
    if size > settings.upload_max_bytes:
        raise ValidationFailed(
            "The file is too large.",
            errors={"size": [f"At most {settings.upload_max_bytes} bytes."]},
        )
    file_id = uuid.uuid4()
    row = UserFile(
        id=file_id, team_id=team_id, uploaded_by_id=user.id, filename=sanitize_filename(filename),
        content_type=content_type, size=size, storage_key=object_key(team_id, file_id),
        state="pending",
    )  # fmt: skip
    # The policy allows exactly up to the declared size: the store refuses a bigger body,
    # and the processing job refuses a smaller one.
    post = _storage().presigned_post(
        row.storage_key,
        content_type=content_type,
        max_size=size,
        expires_in=settings.upload_url_seconds,
    )
    db.session.add(row)
    record_audit("upload.created", actor_id=user.id, team_id=team_id, subject_type="file",
                 subject_id=file_id, data={"filename": row.filename, "size": size,
                                           "content_type": content_type})  # fmt: skip
    db.session.commit()
    expires_at = datetime.now(UTC) + timedelta(seconds=post.expires_in)
    return row, UploadTicket(url=post.url, fields=post.fields, expires_at=expires_at)


def check_upload_open(key: str) -> None:
    """An upload link (local storage) takes bytes only while its file is `pending`: once
    the upload was completed the bytes are being (or were) verified, and nothing may
    replace them; after deletion nothing may be stored at all."""
    state = db.session.scalar(select(UserFile.state).where(UserFile.storage_key == key))
    if state != "pending":
        raise Conflict(
            "This upload link no longer accepts files: the upload was completed or removed."
        )


def get_upload(team_id: uuid.UUID, file_id: uuid.UUID) -> UserFile:
    """A team's file that has not been deleted (404 otherwise, also for other teams')."""
    row = db.session.get(UserFile, file_id)
    if row is None or row.team_id != team_id or row.state == "deleted":
        raise NotFound("No such upload.")
    return row


def list_uploads(
    team_id: uuid.UUID, *, state: str | None, limit: int, cursor: str | None
) -> Page[UserFile]:
    """The team's files, newest first (deleted ones are gone from the API)."""
    query = select(UserFile).where(UserFile.team_id == team_id, UserFile.state != "deleted")
    if state:
        query = query.where(UserFile.state == state)
    return paginate(query, UserFile, limit, cursor)


def locked_upload(file_id: uuid.UUID) -> UserFile | None:
    """The file row, locked for update."""
    return db.session.scalar(select(UserFile).where(UserFile.id == file_id).with_for_update())


def complete_upload(user: User, team_id: uuid.UUID, file_id: uuid.UUID) -> tuple[UserFile, Job]:
    """The browser says the bytes are stored: queue their verification. One transaction."""
    get_upload(team_id, file_id)
    row = locked_upload(file_id)
    assert row is not None
    if row.state != "pending":
        raise Conflict(f"This upload is already {row.state}.")
    row.state = "processing"
    job = enqueue(names.UPLOADS_PROCESS, args={"file_id": str(file_id)}, user_id=user.id,
                  team_id=team_id)  # fmt: skip
    record_audit("upload.completed", actor_id=user.id, team_id=team_id, subject_type="file",
                 subject_id=file_id, data={"job_id": str(job.id)})  # fmt: skip
    db.session.commit()
    return row, job


def delete_upload(
    user: User, role: str, team_id: uuid.UUID, file_id: uuid.UUID
) -> tuple[UserFile, Job]:
    """Mark a file deleted and queue the removal of its objects. Members may delete their
    own files; deleting anyone's needs `files.delete` (admins)."""
    get_upload(team_id, file_id)
    row = locked_upload(file_id)
    assert row is not None
    if row.uploaded_by_id != user.id and not permissions.allows(role, "files.delete"):
        raise Forbidden("Only admins may delete other members' files.")
    job = _mark_deleted(row, actor_id=user.id, action="upload.deleted")
    db.session.commit()
    return row, job


def _mark_deleted(row: UserFile, *, actor_id: uuid.UUID | None, action: str) -> Job:
    """In the caller's transaction: state `deleted`, search entry gone, removal queued."""
    previous = row.state
    row.state = "deleted"
    search.remove_document(SUBJECT_TYPE, row.id)
    # The form's object too: its form may have posted again after the verified copy.
    candidates = [row.storage_key, object_key(row.team_id, row.id), row.thumbnail_key]
    keys = list(dict.fromkeys(key for key in candidates if key))
    job = enqueue(
        names.UPLOADS_DELETE_OBJECT, args={"keys": keys}, user_id=actor_id, team_id=row.team_id
    )
    record_audit(action, actor_id=actor_id, team_id=row.team_id, subject_type="file",
                 subject_id=row.id, data={"previous_state": previous})  # fmt: skip
    return job


def download_url(team_id: uuid.UUID, file_id: uuid.UUID) -> str:
    """A presigned link to a ready file, valid DOWNLOAD_URL_SECONDS."""
    row = get_upload(team_id, file_id)
    if row.state != "ready":
        raise Conflict(f"This upload is {row.state}, not ready.")
    return _storage().presigned_get(
        row.storage_key, expires_in=_settings().download_url_seconds, filename=row.filename
    )


def delete_objects(keys: list[str], storage: ObjectStorage) -> dict[str, Any]:
    """The `uploads.delete_object` job body: removing a missing object is fine (idempotent)."""
    for key in keys:
        if not key.startswith("teams/"):  # only ever our own upload keys
            raise ValueError(f"refusing to delete {key!r}")
        storage.delete(key)
    return {"deleted": len(keys)}


def cleanup_pending(batch: int = 500) -> int:
    """Beat: uploads still `pending` after PENDING_UPLOAD_HOURS are deleted (objects too).
    SKIP LOCKED lets two runs overlap without waiting on or double-deleting a row."""
    cutoff = datetime.now(UTC) - timedelta(hours=_settings().pending_upload_hours)
    rows = db.session.scalars(
        select(UserFile)
        .where(UserFile.state == "pending", UserFile.created_at < cutoff)
        .order_by(UserFile.created_at)
        .limit(batch)
        .with_for_update(skip_locked=True)
    ).all()
    for row in rows:
        _mark_deleted(row, actor_id=None, action="upload.expired")
    db.session.commit()
    return len(rows)
