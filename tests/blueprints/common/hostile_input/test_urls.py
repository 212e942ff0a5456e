"""URLs: no request body takes one, and those that arrive as text are stored, never fetched."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.blueprints.common.hostile_input.hostile import (
    NOW,
    VALID,
    World,
    every_one_refused,
    send,
    with_field,
)

# URLs: none are accepted, and none that arrive as text are fetched ------------------------------


def _request_bodies(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            content = operation.get("requestBody", {}).get("content", {})
            for media in content.values():
                yield path, method, media.get("schema", {})


def _properties(schema: dict[str, Any], spec: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """Every (name, schema) of a body, following $refs into the components."""
    seen: set[str] = set()
    stack: list[Any] = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        ref = node.get("$ref")
        if isinstance(ref, str) and ref not in seen:
            seen.add(ref)
            stack.append(spec["components"]["schemas"][ref.rsplit("/", 1)[-1]])
        properties = node.get("properties") or {}
        yield from properties.items()
        stack.extend(v for k, v in node.items() if k != "properties")
        stack.extend(properties.values())


def test_no_request_body_takes_a_url(client: FlaskClient) -> None:
    """The server fetches no client-given URL (no SSRF surface). A new URL field must come
    with an allow-list and a case here proving 169.254.169.254, localhost, file:// and
    gopher:// are refused."""
    spec = client.get("/openapi.json").get_json()
    words = ("url", "uri", "link", "webhook", "callback", "redirect", "endpoint", "host")
    suspicious = {
        (path, method, name)
        for path, method, schema in _request_bodies(spec)
        for name, prop in _properties(schema, spec)
        if any(w in name.lower() for w in words)
        or (isinstance(prop, dict) and prop.get("format") in ("uri", "url"))
    }
    assert suspicious == set()


SSRF_URLS = [
    "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "http://localhost:6379/",
    "file:///etc/passwd",
    "gopher://127.0.0.1:6379/_FLUSHALL",
]


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A local TCP port that tells whether anything connected to it."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    yield server
    server.close()


def test_urls_in_text_fields_are_stored_not_fetched(
    client: FlaskClient, world: World, listener: socket.socket
) -> None:
    port = listener.getsockname()[1]
    urls = [*SSRF_URLS, f"http://127.0.0.1:{port}/x", f"gopher://127.0.0.1:{port}/_x"]
    # First, while nothing else is in flight: the payments accepted below start jobs
    # whose rows the worker writes later, which `every_one_refused` would count.
    # The one id that goes into the gateway's URLs is a plain token, never a URL or path.
    every_one_refused(
        [*urls, "../../v1/customers", "pm_card_visa/../../x", "pm?expand=x"],
        lambda method: send(client, world, "subscribe",
                            body={"plan": "pro", "payment_method": method}),
        422,
    )  # fmt: skip
    for url in urls:
        bodies = {
            "settings": {"settings": {"avatar_url": url, "webhook": url}},
            "payment": {**VALID["payment"], "description": url},
            "item_create": with_field("item_create", "description", url),
            "events": {"events": [{"name": "visit", "occurred_at": NOW,
                                   "properties": {"callback_url": url}}]},
            "team_update": {"name": url},
        }  # fmt: skip
        for route, body in bodies.items():
            response = send(client, world, route, body=body)
            assert response.status_code < 300, (route, url, response.get_data(as_text=True))
    with pytest.raises(BlockingIOError):
        listener.accept()  # nobody came
