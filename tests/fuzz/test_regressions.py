"""Plain regression tests for what the fuzzer found (tests/fuzz/test_stateless.py)."""

from __future__ import annotations

from typing import Any

from flask.testing import FlaskClient

from tests.factories import auth_headers, make_team, make_user
from tests.support import problem_body


def _spec(client: FlaskClient) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    spec: dict[str, Any] = response.get_json()
    return spec


def test_documented_errors_are_problem_json(client: FlaskClient) -> None:
    """The document promised `{"message", "detail"}` JSON errors; we send problem+json."""
    spec = _spec(client)
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if status[0] in "45":
                    assert list(response["content"]) == ["application/problem+json"], (
                        method,
                        path,
                        status,
                    )
    assert "HTTPError" not in spec["components"]["schemas"]


def test_every_status_an_operation_answers_is_documented(client: FlaskClient) -> None:
    """Clients read the statuses off the document: a malformed body (400), a wrong content
    type (415), a too-large body (413), rate limits (429), a dependency down (503), a
    credential lacking a scope (403), a duplicate SKU (409) were all missing."""
    item = _spec(client)["paths"]["/api/v1/teams/{team_id}/inventory"]["post"]
    assert {"400", "401", "403", "404", "409", "413", "415", "422", "429", "503"} <= set(
        item["responses"]
    )
    assert item["requestBody"]["required"] is True
    team_id = next(p for p in item["parameters"] if p["name"] == "team_id")
    assert team_id["schema"] == {"type": "string", "format": "uuid"}
    key = next(p for p in item["parameters"] if p["name"] == "Idempotency-Key")
    assert key["in"] == "header" and key["required"] is False


def test_blank_idempotency_key_is_refused(client: FlaskClient) -> None:
    """A blank key used to be ignored: the client believed it was protected against a
    duplicate create and was not."""
    headers = {**auth_headers(make_user()), "Idempotency-Key": "  "}
    response = client.post("/api/v1/teams", json={"name": "Blank key"}, headers=headers)
    body = problem_body(response, 422)
    assert "Idempotency-Key" in body["errors"]
    names = [t["name"] for t in client.get("/api/v1/teams", headers=headers).get_json()["items"]]
    assert "Blank key" not in names


def test_null_for_a_required_item_field_is_a_422_not_a_500(client: FlaskClient) -> None:
    """`PATCH .../inventory/{id}` with `{"archived": null}` reached the NOT NULL column and
    answered 500 (found by the stateful fuzzer)."""
    owner = make_user()
    headers = auth_headers(owner)
    base = f"/api/v1/teams/{make_team(owner)}/inventory"
    item = {"sku": "NUL-1", "name": "Bolt", "unit_price": 100, "currency": "USD"}
    created = client.post(base, json=item, headers=headers)
    assert created.status_code == 201, created.get_data(as_text=True)
    url = f"{base}/{created.get_json()['item']['id']}"

    for field in ("archived", "name", "unit_price", "currency", "low_stock_threshold"):
        body = problem_body(client.patch(url, json={field: None}, headers=headers), 422)
        assert field in body["errors"]
    assert client.get(url, headers=headers).get_json()["item"]["archived"] is False
    # Leaving a field out, or nulling the nullable description, still works.
    response = client.patch(url, json={"description": None, "name": "Hex bolt"}, headers=headers)
    assert response.status_code == 200
    assert response.get_json()["item"]["name"] == "Hex bolt"
