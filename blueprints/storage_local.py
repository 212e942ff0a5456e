"""The "presigned" URLs of `LocalStorage`: form uploads and downloads served by this app.

Only used with STORAGE_BACKEND=local (development, demos). The signed token is the
authorisation, as a presigned S3 URL would be: it names the key, the expiry, the maximum
size and the content type, so a browser can only store what the upload was created for.
Unlike S3's, an upload link also stops working once its file is no longer `pending` (409).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO, Any

from apiflask import APIBlueprint
from flask import current_app, request, send_file

from blueprints.common.openapi import header_ref, operation_doc
from blueprints.common.request_hooks import accepts_any_content
from integrations.storage_backends import get_storage
from integrations.storage_local import LocalStorage, TokenExpired, TokenInvalid
from services.core.errors import Forbidden, NotFound, ServiceError, ValidationFailed
from services.files import uploads

bp = APIBlueprint("storage_local", __name__, url_prefix="/api/v1/storage", tag="storage")
CHUNK = 1024 * 1024
# Room for the multipart envelope and the token field around the file itself.
FORM_OVERHEAD = 64 * 1024


class LinkExpired(ServiceError):
    status, title, type_slug = 410, "Gone", "link-expired"


class TooLarge(ServiceError):
    status, title, type_slug = 413, "Content Too Large", "too-large"


def _local() -> LocalStorage:
    storage = get_storage()
    if not isinstance(storage, LocalStorage):  # with S3 the store serves these itself
        raise NotFound("Local storage is not enabled.")
    return storage


def _verify(check: Any, token: str) -> Any:
    try:
        return check(token)
    except TokenExpired:
        raise LinkExpired("This link has expired; ask for a new one.") from None
    except TokenInvalid:
        raise Forbidden("This link is not valid.") from None


def _limited(stream: IO[bytes], max_size: int) -> Iterator[bytes]:
    """The stream's chunks, refusing (mid-way, so nothing is stored) above `max_size`."""
    total = 0
    while chunk := stream.read(CHUNK):
        total += len(chunk)
        if total > max_size:
            raise TooLarge(f"The file is larger than the {max_size} bytes allowed.")
        yield chunk
    if total == 0:
        raise ValidationFailed("The file is empty.", errors={"file": ["Empty file."]})


_TOKEN = (
    "The signed token: it names the object, the expiry, the size allowed and the content "
    "type. It is the only authorisation, like an S3 presigned URL's signature."
)
_UPLOAD_BODY = {
    "required": True,
    "description": "The upload's form: its `fields` (the `token`) first, then the file.",
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["token", "file"],
                "properties": {
                    "token": {"type": "string", "description": _TOKEN},
                    "Content-Type": {
                        "type": "string",
                        "description": "The file's type, if not the file part's own; it "
                        "must be the one the upload was created with.",
                    },
                    "file": {"type": "string", "format": "binary"},
                },
            },
            "encoding": {"file": {"contentType": "*/*"}},
        }
    },
}
_DOWNLOAD_TOKEN = {
    "name": "token",
    "in": "query",
    "required": True,
    "description": _TOKEN,
    "schema": {"type": "string"},
}
_LINK_ERRORS: dict[int | str, dict[str, Any]] = {
    403: {"description": "The signed token is not valid"},
    404: {"description": "Local storage is not enabled, or the file is gone"},
    410: {"description": "The link has expired"},
}


@bp.post("/upload")
@accepts_any_content
@operation_doc(operation_id="upload_file", requestBody=_UPLOAD_BODY, security=[])
@bp.doc(responses={
    204: {"description": "Stored"},
    **_LINK_ERRORS,
    409: {"description": "The upload was completed or removed: the link takes no more files"},
    413: {"description": "Larger than the link allows"},
    422: {"description": "No file, or an empty one"},
})  # fmt: skip
def upload() -> Any:
    """Store a file posted as a form (`token`, then `file`), like an S3 presigned POST."""
    settings = current_app.config["SETTINGS"]
    # The app-wide MAX_CONTENT_LENGTH is for JSON; a file may be as large as uploads allow
    # (the token's own, smaller limit is enforced while streaming below).
    request.max_content_length = settings.upload_max_bytes + FORM_OVERHEAD
    storage = _local()
    grant = _verify(storage.verify_upload, request.form.get("token", ""))
    uploads.check_upload_open(grant.key)
    file = request.files.get("file")
    if file is None:
        raise ValidationFailed("Post the file as the `file` field.", errors={"file": ["Missing."]})
    declared = request.form.get("Content-Type") or file.mimetype
    if declared != grant.content_type:
        raise Forbidden(f"This link accepts {grant.content_type} only.")
    storage.write(grant.key, _limited(file.stream, grant.max_size), content_type=declared)
    return "", 204


@bp.get("/download")
@operation_doc(operation_id="download_file", parameters=[_DOWNLOAD_TOKEN], security=[])
@bp.doc(responses={
    200: {
        "description": "The file, as an attachment of its stored type",
        # Its stored type, whatever it is; octet-stream first, which generators read.
        "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "*/*": {"schema": {"type": "string", "format": "binary"}},
        },
        "headers": {"Content-Disposition": header_ref("Content-Disposition")},
    },
    **_LINK_ERRORS,
})  # fmt: skip
def download() -> Any:
    """Serve a file named by a signed download token (410 once expired)."""
    storage = _local()
    grant = _verify(storage.verify_download, request.args.get("token", ""))
    info = storage.head(grant.key)
    if info is None:
        raise NotFound("No such file.")
    response = send_file(
        storage.local_path(grant.key),
        as_attachment=True,
        download_name=grant.filename or grant.key.rsplit("/", 2)[-2],
    )
    # The stored type exactly, as S3 serves it: `mimetype=` would append werkzeug's own
    # charset to any text type, after the one an export stores (`; charset=utf-8` twice).
    response.headers["Content-Type"] = info.content_type or "application/octet-stream"
    response.headers["Cache-Control"] = "private, no-store"
    return response
