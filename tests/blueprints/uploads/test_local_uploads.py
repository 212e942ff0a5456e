"""Uploads with local storage: the app's own signed upload and download links, and what a
link accepts once the file is no longer pending.
"""

from __future__ import annotations

import hashlib
import io
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from apiflask import APIFlask

from scripts.devservices import RedisServer
from tests.blueprints.uploads.helpers import (
    BUCKET,
    KEEP,
    browser_post,
    complete,
    png_bytes,
    start_upload,
)
from tests.factories import auth_headers, make_user, personal_team
from tests.support import (
    LOGS,
    PrivateStacks,
    Worker,
    problem_body,
    running_worker,
    wait_job,
)


def test_local_storage_upload_process_and_expiring_download(
    private_stack: PrivateStacks, broker: RedisServer, tmp_path: Path
) -> None:
    stack = private_stack(
        keep=KEEP, storage_backend="local", storage_local_dir=str(tmp_path / "store"),
        broker=broker, broker_db=1, download_url_seconds=1,
        public_api_url="http://localhost",
    )  # fmt: skip
    local, local_app = stack.settings, stack.app
    client = local_app.test_client()
    user = make_user()
    team_id, headers = personal_team(user), auth_headers(user)
    data = png_bytes((64, 64))
    created = start_upload(
        client, team_id, headers, name="l.png", ctype="image/png", size=len(data)
    )
    form = created["upload"]
    path = urlsplit(form["url"]).path
    assert path == "/api/v1/storage/upload"

    too_big = {**form["fields"], "file": (io.BytesIO(data + b"x"), "l.png", "image/png")}
    assert client.post(path, data=too_big, content_type="multipart/form-data").status_code == 413
    wrong = {**form["fields"], "file": (io.BytesIO(data), "l.gif", "image/gif")}
    problem_body(client.post(path, data=wrong, content_type="multipart/form-data"), 403)
    forged = {
        "token": form["fields"]["token"] + "x",
        "file": (io.BytesIO(data), "l.png", "image/png"),
    }
    problem_body(client.post(path, data=forged, content_type="multipart/form-data"), 403)
    good = {**form["fields"], "file": (io.BytesIO(data), "l.png", "image/png")}
    response = client.post(path, data=good, content_type="multipart/form-data")
    assert response.status_code == 204, response.get_data(as_text=True)

    with running_worker(local, LOGS / "uploads-local-worker.log", concurrency=1) as worker:
        done = complete(client, team_id, headers, created["file"]["id"], worker)
    assert done["state"] == "ready" and done["has_thumbnail"], done

    redirect = client.get(
        f"/api/v1/teams/{team_id}/uploads/{created['file']['id']}/download", headers=headers
    )
    assert redirect.status_code == 302
    link = urlsplit(redirect.headers["Location"])
    fetched = client.get(f"{link.path}?{link.query}")
    assert fetched.status_code == 200 and fetched.data == data
    assert fetched.headers["Content-Disposition"].startswith("attachment")
    time.sleep(2)
    problem_body(client.get(f"{link.path}?{link.query}"), 410)


def test_a_second_post_of_the_form_after_verification_never_replaces_the_verified_file(
    s3_app: APIFlask, s3_worker: Worker, s3: Any
) -> None:
    # A presigned POST cannot be revoked: until it expires, its form stores again. The
    # attacker completes a harmless file, then posts other bytes with the same form.
    client = s3_app.test_client()
    user = make_user()
    team_id, headers = personal_team(user), auth_headers(user)
    data = png_bytes((48, 48))
    created = start_upload(
        client, team_id, headers, name="logo.png", ctype="image/png", size=len(data)
    )
    file_id, form_key = created["file"]["id"], created["upload"]["fields"]["key"]
    assert browser_post(created["upload"], "logo.png", data, "image/png").ok
    done = complete(client, team_id, headers, file_id, s3_worker)
    assert done["state"] == "ready" and done["sha256"] == hashlib.sha256(data).hexdigest()

    swapped = b"<svg onload=alert(1)>" + b" " * 100
    posted = browser_post(created["upload"], "logo.png", swapped, "image/png")
    assert posted.ok, posted.text  # S3 (moto) stores it: nothing can stop the form
    for _ in range(2):  # the link, and the recorded hash, are the verified bytes'
        link = client.get(f"/api/v1/teams/{team_id}/uploads/{file_id}/download", headers=headers)
        assert link.status_code == 302
        fetched = requests.get(link.headers["Location"], timeout=10)
        assert fetched.status_code == 200 and fetched.content == data
        shown = client.get(f"/api/v1/teams/{team_id}/uploads/{file_id}", headers=headers)
        assert shown.get_json()["file"]["sha256"] == hashlib.sha256(fetched.content).hexdigest()

    # Deleting the file removes every object of it, the form's second post included.
    deleted = client.delete(f"/api/v1/teams/{team_id}/uploads/{file_id}", headers=headers)
    wait_job(deleted.get_json()["job"]["id"], "succeeded", describe=s3_worker.describe)
    prefix = form_key.rsplit("/", 1)[0] + "/"
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("KeyCount") == 0


def test_a_local_upload_link_takes_no_bytes_once_the_file_is_no_longer_pending(
    private_stack: PrivateStacks, broker: RedisServer, tmp_path: Path
) -> None:
    stack = private_stack(
        keep=KEEP, storage_backend="local", storage_local_dir=str(tmp_path / "store"),
        broker=broker, broker_db=2, public_api_url="http://localhost",
    )  # fmt: skip
    local, client = stack.settings, stack.client()
    user = make_user()
    team_id, headers = personal_team(user), auth_headers(user)
    data = png_bytes((40, 40))
    created = start_upload(
        client, team_id, headers, name="a.png", ctype="image/png", size=len(data)
    )
    path, fields = urlsplit(created["upload"]["url"]).path, created["upload"]["fields"]

    def post(body: bytes) -> Any:
        form = {**fields, "file": (io.BytesIO(body), "a.png", "image/png")}
        return client.post(path, data=form, content_type="multipart/form-data")

    assert post(data).status_code == 204
    assert post(data).status_code == 204  # while pending the browser may post again
    file_id = created["file"]["id"]
    started = client.post(f"/api/v1/teams/{team_id}/uploads/{file_id}/complete", headers=headers)
    assert started.status_code == 202
    swapped = b"\x89PNG" + b"\x00" * (len(data) - 4)
    refused = post(swapped)  # being verified: nothing may replace the bytes now
    assert "no longer accepts" in problem_body(refused, 409)["detail"]

    with running_worker(local, LOGS / "uploads-local-worker.log", concurrency=1) as worker:
        wait_job(started.get_json()["job"]["id"], "succeeded", describe=worker.describe)
    problem_body(post(swapped), 409)  # ready: still refused
    link = urlsplit(
        client.get(f"/api/v1/teams/{team_id}/uploads/{file_id}/download", headers=headers).headers[
            "Location"
        ]
    )
    fetched = client.get(f"{link.path}?{link.query}")
    assert fetched.status_code == 200 and fetched.data == data
    shown = client.get(f"/api/v1/teams/{team_id}/uploads/{file_id}", headers=headers)
    assert shown.get_json()["file"]["sha256"] == hashlib.sha256(data).hexdigest()
