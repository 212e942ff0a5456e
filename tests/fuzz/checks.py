"""Our own schemathesis check: API.md's error contract, on every error response."""

from __future__ import annotations

import json
from typing import Any

import schemathesis
from schemathesis import Case, CheckContext, Response

PROBLEM = "application/problem+json"


@schemathesis.check
def errors_are_problem_json(ctx: CheckContext, response: Response, case: Case[Any]) -> bool | None:
    """A 4xx/5xx is RFC 9457 problem+json: its status, a title and detail, the request id."""
    if response.status_code < 400:
        return None
    content_type = (response.headers.get("content-type") or [""])[0]
    assert content_type.split(";")[0].strip() == PROBLEM, (
        f"{response.status_code} answered as {content_type!r}, not {PROBLEM}"
    )
    body: Any = json.loads(response.content)
    assert isinstance(body, dict), "a problem is a JSON object"
    assert body.get("status") == response.status_code, "the problem's status differs"
    assert body.get("title") and body.get("detail"), "a problem has a title and a detail"
    assert body.get("request_id"), "a problem carries the request id"
    return True
