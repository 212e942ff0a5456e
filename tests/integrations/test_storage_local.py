"""Local storage's signed links last the time they were given, not up to a second less."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from integrations.storage_local import LocalStorage, TokenExpired


def test_a_one_second_link_made_late_in_a_second_still_works_most_of_a_second_later(
    tmp_path: Path,
) -> None:
    storage = LocalStorage(tmp_path, secret_key="k" * 32, base_url="http://127.0.0.1:8000")
    while time.time() % 1 < 0.8:  # the end of a wall-clock second
        time.sleep(0.01)
    link = storage.presigned_get("team/file.txt", expires_in=1)
    form = storage.presigned_post("team/up.png", content_type="image/png", max_size=10,
                                  expires_in=1)  # fmt: skip
    token = link.split("token=", 1)[1]
    time.sleep(0.5)  # into the next second: a truncated expiry had passed already
    assert storage.verify_download(token).key == "team/file.txt"
    assert storage.verify_upload(form.fields["token"]).key == "team/up.png"
    time.sleep(0.6)
    with pytest.raises(TokenExpired):
        storage.verify_download(token)
