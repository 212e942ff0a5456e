"""Reading and sending HTTP in tests: problem+json bodies and bearer headers."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from werkzeug.test import TestResponse


def problem_body(response: TestResponse, status: int) -> dict[str, Any]:
    """The parsed problem+json body, after checking the status and media type."""
    text = response.get_data(as_text=True)
    assert response.status_code == status, text
    assert response.mimetype == "application/problem+json"
    body: dict[str, Any] = json.loads(text)
    assert body["status"] == status and body["detail"]
    return body


def bearer(token: str) -> Mapping[str, str]:
    return {"Authorization": f"Bearer {token}"}
