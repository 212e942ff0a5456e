"""Helpers of the upload tests: images, starting an upload, the browser's form post,
completing, and what the bucket holds.
"""

from __future__ import annotations

import io
import uuid
from typing import Any

import requests
from flask.testing import FlaskClient
from PIL import Image

from config import Settings
from tests.support import (
    Worker,
    wait_job,
)

BUCKET = "uploads-test"


KEEP = ("database_url", "redis_url", "redis_sentinel_master", "smtp_url", "stripe_api_base",
        "stripe_secret_key",
        "stripe_webhook_secret")  # fmt: skip


def _base(settings: Settings) -> dict[str, Any]:
    return {name: getattr(settings, name) for name in KEEP}


def png_bytes(size: tuple[int, int] = (800, 600)) -> bytes:
    image = Image.new("RGB", size, (200, 30, 90))
    image.putpixel((5, 5), (0, 0, 0))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def start_upload(
    client: FlaskClient, team_id: uuid.UUID, headers: Any, *, name: str, ctype: str, size: int
) -> dict[str, Any]:
    body = {"filename": name, "content_type": ctype, "size": size}
    response = client.post(f"/api/v1/teams/{team_id}/uploads", json=body, headers=headers)
    assert response.status_code == 201, response.get_data(as_text=True)
    return dict(response.get_json())


def browser_post(upload: dict[str, Any], name: str, data: bytes, ctype: str) -> requests.Response:
    """Exactly what a browser form does: the policy fields, then the file last."""
    assert upload["method"] == "POST"
    files = {"file": (name, data, ctype)}
    return requests.post(upload["url"], data=upload["fields"], files=files, timeout=10)


def complete(
    client: FlaskClient, team_id: uuid.UUID, headers: Any, file_id: str, worker: Worker
) -> dict[str, Any]:
    url = f"/api/v1/teams/{team_id}/uploads/{file_id}/complete"
    response = client.post(url, headers=headers)
    assert response.status_code == 202, response.get_data(as_text=True)
    assert response.get_json()["file"]["state"] == "processing"
    wait_job(response.get_json()["job"]["id"], "succeeded", describe=worker.describe)
    got = client.get(f"/api/v1/teams/{team_id}/uploads/{file_id}", headers=headers)
    return dict(got.get_json()["file"])
