"""/openapi.json is fit for client generators (issue 17): what a frontend's generated
client relies on, read from the served document, and checked against the server where
the document makes a promise about behaviour (null in PATCH bodies, Location on 202s).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from apiflask import APIFlask
from flask.testing import FlaskClient

from tests.factories import auth_headers, make_team, make_user, verify_email

METHODS = ("get", "put", "post", "patch", "delete")
V1 = "/api/v1"


@pytest.fixture(scope="module")
def spec(app: APIFlask) -> dict[str, Any]:
    document: dict[str, Any] = app.test_client().get("/openapi.json").get_json()
    return document


def operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in spec["paths"].items():
        for method in METHODS:
            if method in item:
                yield path, method, item[method]


def component(spec: dict[str, Any], ref: dict[str, str]) -> dict[str, Any]:
    kind, name = ref["$ref"].removeprefix("#/components/").split("/")
    found: dict[str, Any] = spec["components"][kind][name]
    return found


def request_schema(spec: dict[str, Any], path: str, method: str) -> dict[str, Any]:
    body = spec["paths"][path][method]["requestBody"]["content"]["application/json"]
    return component(spec, body["schema"])


def walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


# --- names generators build on --------------------------------------------------------


def test_every_operation_has_a_unique_verb_noun_operation_id(spec: dict[str, Any]) -> None:
    ids = [str(op.get("operationId", "")) for _, _, op in operations(spec)]
    assert all(ids), "an operation without an operationId"
    assert [i for i, n in Counter(ids).items() if n > 1] == []
    assert [i for i in ids if not re.fullmatch(r"[a-z]+(_[a-z0-9]+)+", i)] == []
    # The names a client's methods carry: stable, and what the view does.
    assert spec["paths"][f"{V1}/teams"]["get"]["operationId"] == "list_teams"
    assert spec["paths"][f"{V1}/auth/login"]["post"]["operationId"] == "log_in"
    assert spec["paths"][f"{V1}/teams/{{team_id}}/exports"]["post"]["operationId"] == (
        "create_export"
    )


def test_each_model_is_one_component_named_and_titled_alike(spec: dict[str, Any]) -> None:
    """openapi-python-client names classes by title: shared titles cost 44 schemas."""
    schemas = spec["components"]["schemas"]
    assert [name for name, schema in schemas.items() if schema.get("title", name) != name] == []
    assert [name for name in schemas if not re.fullmatch(r"[A-Za-z0-9]+", name)] == []
    # JobOut is one component, which every job-carrying envelope points at.
    assert component(spec, schemas["JobEnvelope"]["properties"]["job"]) is schemas["JobOut"]
    assert schemas["JobPage"]["properties"]["items"]["items"] == {
        "$ref": "#/components/schemas/JobOut"
    }
    # Every component is used (nothing left over from APIFlask's own naming).
    text = str(spec["paths"]) + str(schemas)
    assert [n for n in schemas if f"#/components/schemas/{n}'" not in text] == []


def test_tags_are_listed_once_each_with_a_description(spec: dict[str, Any]) -> None:
    names = [tag["name"] for tag in spec["tags"]]
    assert len(names) == len(set(names))
    assert all(tag.get("description") for tag in spec["tags"])
    used = {tag for _, _, op in operations(spec) for tag in op.get("tags", [])}
    assert used == set(names)


# --- who may call ----------------------------------------------------------------------


def test_public_operations_declare_empty_security(spec: dict[str, Any]) -> None:
    for path, method in [
        (f"{V1}/auth/login", "post"),
        (f"{V1}/auth/register", "post"),
        (f"{V1}/plans", "get"),
        ("/healthz", "get"),
        (f"{V1}/storage/upload", "post"),
        (f"{V1}/storage/download", "get"),
        (f"{V1}/webhooks/stripe", "post"),
    ]:
        operation = spec["paths"][path][method]
        assert operation["security"] == [], path
        assert "Public" in operation["description"], path
    # Every operation says it, one way or the other.
    assert [p for p, _, op in operations(spec) if "security" not in op] == []
    guarded = spec["paths"][f"{V1}/teams/{{team_id}}/payments"]["post"]
    assert guarded["security"] == [{"BearerAuth": []}, {"ApiKeyAuth": []}]
    assert "`payments.create` (owner, admin, member)" in guarded["description"]


def test_the_idempotency_key_is_described_in_the_document_itself(spec: dict[str, Any]) -> None:
    headers = [
        p
        for _, _, op in operations(spec)
        for p in op.get("parameters", [])
        if p["name"] == "Idempotency-Key"
    ]
    assert headers
    for header in headers:
        assert ".md" not in header["description"] or "README" in header["description"]
        assert "API.md" not in header["description"]
        assert "Idempotent-Replayed" in header["description"]
    payment = spec["paths"][f"{V1}/teams/{{team_id}}/payments"]["post"]["parameters"]
    assert [p["required"] for p in payment if p["name"] == "Idempotency-Key"] == [True]


# --- response headers ------------------------------------------------------------------


def headers_of(spec: dict[str, Any], path: str, method: str, status: str) -> dict[str, Any]:
    response = spec["paths"][path][method]["responses"][status]
    return {name: component(spec, ref) for name, ref in response.get("headers", {}).items()}


def test_every_response_documents_the_request_id(spec: dict[str, Any]) -> None:
    missing = [
        (path, method, status)
        for path, method, op in operations(spec)
        for status, response in op["responses"].items()
        if "X-Request-ID" not in response.get("headers", {})
    ]
    assert missing == []


def test_headers_are_documented_where_the_server_sends_them(spec: dict[str, Any]) -> None:
    payments = f"{V1}/teams/{{team_id}}/payments"
    accepted = headers_of(spec, payments, "post", "202")
    assert accepted["Location"]["required"] is True
    assert "Idempotent-Replayed" in accepted
    assert {"RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"} <= accepted.keys()
    for status in ("429", "503"):
        assert headers_of(spec, payments, "post", status)["Retry-After"]["required"] is True
    assert "Location" in headers_of(spec, f"{V1}/teams", "post", "201")
    dashboard = headers_of(spec, f"{V1}/teams/{{team_id}}/dashboard", "get", "200")
    assert dashboard["X-Cache"]["schema"]["enum"] == ["hit", "miss"]
    export = f"{V1}/teams/{{team_id}}/exports/{{export_id}}/download"
    assert "Retry-After" in headers_of(spec, export, "get", "409")
    # Not rate limited, so no RateLimit-* (and no 429).
    assert "RateLimit-Limit" not in headers_of(spec, "/healthz", "get", "200")
    assert "429" not in spec["paths"]["/healthz"]["get"]["responses"]


def test_downloads_are_redirects_with_a_location_and_no_body(spec: dict[str, Any]) -> None:
    for path in (
        f"{V1}/teams/{{team_id}}/exports/{{export_id}}/download",
        f"{V1}/teams/{{team_id}}/uploads/{{file_id}}/download",
    ):
        redirect = spec["paths"][path]["get"]["responses"]["302"]
        assert "content" not in redirect
        assert headers_of(spec, path, "get", "302")["Location"]["required"] is True
    upload = spec["paths"][f"{V1}/teams/{{team_id}}/uploads/{{file_id}}/download"]["get"]
    assert "409" in upload["responses"]  # not ready yet


def test_the_storage_operations_document_their_token_and_body(spec: dict[str, Any]) -> None:
    upload = spec["paths"][f"{V1}/storage/upload"]["post"]
    form = upload["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["required"] == ["token", "file"]
    assert form["properties"]["file"]["format"] == "binary"
    assert "415" not in upload["responses"]  # a form is not refused for not being JSON
    assert {"204", "403", "409", "410", "413", "422"} <= upload["responses"].keys()
    download = spec["paths"][f"{V1}/storage/download"]["get"]
    assert [(p["name"], p["in"], p["required"]) for p in download["parameters"]] == [
        ("token", "query", True)
    ]
    assert "Content-Disposition" in headers_of(spec, f"{V1}/storage/download", "get", "200")


# --- request bodies: what the server accepts ------------------------------------------------


def test_a_request_field_with_a_default_is_optional_and_has_no_default_keyword(
    spec: dict[str, Any],
) -> None:
    """openapi-typescript types a property with `default` as always present: our own bodies
    without it failed `tsc --strict`. Request fields say their default in words."""
    invite = request_schema(spec, f"{V1}/teams/{{team_id}}/invites", "post")
    assert invite["required"] == ["email"]
    assert "default" not in invite["properties"]["role"]
    assert '`"member"`' in invite["properties"]["role"]["description"]
    item = request_schema(spec, f"{V1}/teams/{{team_id}}/inventory", "post")
    assert sorted(item["required"]) == ["name", "sku"]
    payment = request_schema(spec, f"{V1}/teams/{{team_id}}/payments", "post")
    assert sorted(payment["required"]) == ["amount", "currency", "payment_method"]
    for path, method, op in operations(spec):
        if "application/json" in op.get("requestBody", {}).get("content", {}):
            body = request_schema(spec, path, method)
            nested = [component(spec, n) for n in walk(body) if "$ref" in n]
            defaults = [n for schema in (body, *nested) for n in walk(schema) if "default" in n]
            assert defaults == [], (path, method)


def test_responses_require_every_field_the_server_always_sends(spec: dict[str, Any]) -> None:
    job = spec["components"]["schemas"]["JobOut"]
    assert set(job["required"]) == set(job["properties"])  # `error`, `result` default to null


def test_query_parameters_are_never_null(spec: dict[str, Any]) -> None:
    parameters = [
        p for _, _, op in operations(spec) for p in op.get("parameters", []) if p["in"] == "query"
    ]
    assert parameters
    assert [p for p in parameters if "'null'" in str(p["schema"])] == []
    limit = spec["paths"][f"{V1}/teams"]["get"]["parameters"][0]
    assert limit["name"] == "limit" and limit["schema"]["default"] == 50


NULLABLE_PATCHES = {
    # (path template, method): the properties the document may declare nullable
    (f"{V1}/teams/{{team_id}}", "patch"): set(),
    (f"{V1}/teams/{{team_id}}/inventory/{{item_id}}", "patch"): {"description"},
    (f"{V1}/me", "patch"): {"avatar_file_id"},
}


def nullable(schema: dict[str, Any]) -> bool:
    return {"type": "null"} in schema.get("anyOf", []) or "null" in schema.get("type", [])


def test_patch_bodies_declare_null_only_where_it_clears_a_value(spec: dict[str, Any]) -> None:
    for (path, method), expected in NULLABLE_PATCHES.items():
        properties = request_schema(spec, path, method)["properties"]
        assert {name for name, s in properties.items() if nullable(s)} == expected, path


def test_the_server_refuses_null_exactly_where_the_document_does_not_declare_it(
    client: FlaskClient, spec: dict[str, Any]
) -> None:
    owner = verify_email(make_user())
    headers = auth_headers(owner)
    team_id = make_team(owner)
    created = client.post(
        f"{V1}/teams/{team_id}/inventory", json={"sku": "S-1", "name": "Widget"}, headers=headers
    )
    assert created.status_code == 201, created.get_json()
    item_id = created.get_json()["item"]["id"]
    urls = {
        f"{V1}/teams/{{team_id}}": f"{V1}/teams/{team_id}",
        f"{V1}/teams/{{team_id}}/inventory/{{item_id}}": f"{V1}/teams/{team_id}/inventory/"
        f"{item_id}",
        f"{V1}/me": f"{V1}/me",
    }
    for (path, method), _ in NULLABLE_PATCHES.items():
        for name, schema in request_schema(spec, path, method)["properties"].items():
            response = client.patch(urls[path], json={name: None}, headers=headers)
            accepted = response.status_code == 200
            assert accepted == nullable(schema), (path, name, response.get_json())


def test_a_202_with_a_job_carries_the_documented_location(client: FlaskClient) -> None:
    owner = verify_email(make_user())
    team_id = make_team(owner)
    response = client.post(
        f"{V1}/teams/{team_id}/exports",
        json={"resource": "inventory"},
        headers=auth_headers(owner),
    )
    assert response.status_code == 202
    assert response.headers["Location"] == f"{V1}/jobs/{response.get_json()['job']['id']}"
    assert response.headers["X-Request-ID"]
