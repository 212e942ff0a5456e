"""`PORT=18000 make run`: the links the API hands out point at the port it listens on.

gunicorn as the Procfile runs it, on a free port, with PUBLIC_API_URL unset and the local
storage backend (`make run`'s): a browser's upload and an export's download go through
the URLs the API returns, nothing else.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests
from apiflask import APIFlask

from config import Settings
from tests.blueprints.uploads.helpers import browser_post, png_bytes
from tests.factories import auth_headers, make_user, personal_team
from tests.support import WebServer, Worker, wait_job

pytestmark = pytest.mark.worker


@pytest.fixture
def web(settings: Settings, app: APIFlask, worker: Worker) -> Iterator[WebServer]:
    assert settings.storage_backend == "local"
    server = WebServer("links", settings.model_copy(update={"public_api_url": ""}))
    server.start()
    yield server
    server.stop()


def _accepted_job(response: requests.Response) -> dict[str, Any]:
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    wait_job(body["job"]["id"], "succeeded")
    return body


def test_upload_and_export_download_follow_the_port_without_public_api_url(
    web: WebServer,
) -> None:
    base = f"http://127.0.0.1:{web.port}"
    assert web.port != 8000
    user = make_user()
    team_id, headers = personal_team(user), dict(auth_headers(user))
    api = requests.Session()
    api.headers.update(headers)

    # Upload: the browser posts the form to the URL it was given.
    image = png_bytes((32, 32))
    created = api.post(
        f"{base}/api/v1/teams/{team_id}/uploads",
        json={"filename": "photo.png", "content_type": "image/png", "size": len(image)},
        timeout=10,
    )
    assert created.status_code == 201, created.text
    form, file_id = created.json()["upload"], created.json()["file"]["id"]
    assert form["url"] == f"{base}/api/v1/storage/upload"
    stored = browser_post(form, "photo.png", image, "image/png")
    assert stored.status_code == 204, stored.text
    _accepted_job(api.post(f"{base}/api/v1/teams/{team_id}/uploads/{file_id}/complete"))
    link = api.get(
        f"{base}/api/v1/teams/{team_id}/uploads/{file_id}/download", allow_redirects=False
    )
    assert link.status_code == 302, link.text
    assert link.headers["Location"].startswith(f"{base}/api/v1/storage/download?token=")
    downloaded = requests.get(link.headers["Location"], timeout=10)
    assert downloaded.status_code == 200 and downloaded.content == image

    # Export: the download redirects to a link on the same server.
    export = _accepted_job(
        api.post(
            f"{base}/api/v1/teams/{team_id}/exports",
            json={"resource": "payments", "format": "csv"},
        )
    )["export"]
    link = api.get(
        f"{base}/api/v1/teams/{team_id}/exports/{export['id']}/download", allow_redirects=False
    )
    assert link.status_code == 302, link.text
    assert link.headers["Location"].startswith(f"{base}/api/v1/storage/download?token=")
    downloaded = requests.get(link.headers["Location"], timeout=10)
    assert downloaded.status_code == 200, downloaded.text
    assert downloaded.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert downloaded.text.splitlines()[0].startswith("id,created_at,amount,")
