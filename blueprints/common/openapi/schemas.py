"""Component schemas: one per pydantic model, named once, in the direction it travels.

APIFlask files each body's nested models under `Parent.Child` keys, so one model (JobOut)
appeared under a dozen keys, all titled alike, and generators that name classes by title
(openapi-python-client) dropped 44 of them. Here pydantic generates every model a view
reads or answers in one pass (`models_json_schema`), which gives each model one component:

- request bodies and query parameters in validation mode (what the server accepts). A
  field with a default is optional, and its default is said in words, not as `default`:
  openapi-typescript, by default, types every property that has a `default` as always
  present, which is true of responses and wrong for request bodies (`tsc --strict` then
  refused bodies that leave such a field out);
- responses in serialization mode: every field is always sent, defaults included, so
  every field is required and no `default` is shown;
- query parameters keep their `default` (generators make no parameter required for it);
- a model whose two directions differ (a nested one with defaults) gets two components,
  `<Model>Input` and `<Model>Output`;
- no per-property titles (pydantic's Title Case of the field name says nothing, and
  generators named inline enums after them: a dozen classes called `Role`).

Query parameters are rebuilt from their model the same way, without `null`: a query
parameter is absent or a string, never JSON null.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from typing import Any, Final, TypeGuard

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode, models_json_schema
from pydantic_core import core_schema

REF_PREFIX: Final = "#/components/schemas/"
# Where the validation-mode generator parks a default until `_say_defaults` words it.
_DEFAULT: Final = "x-request-default"
_NULL: Final = {"type": "null"}


class _Generator(GenerateJsonSchema):
    def field_title_should_be_set(self, schema: Any) -> bool:
        return False

    def field_is_required(
        self,
        field: core_schema.ModelField | core_schema.DataclassField | core_schema.TypedDictField,
        total: bool,
    ) -> bool:
        if self.mode == "serialization" and field["type"] != "typed-dict-field":
            return True  # the server sends every field of a response, defaults included
        return super().field_is_required(field, total)

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> dict[str, Any]:
        json_schema = super().default_schema(schema)
        default = json_schema.pop("default", None)
        if self.mode == "validation" and default is not None:
            json_schema[_DEFAULT] = default
        return json_schema


def component_schemas(
    spec: dict[str, Any], views: dict[tuple[str, str], Callable[..., Any]]
) -> dict[str, Any]:
    """Rebuild components/schemas from the views' models; point bodies and parameters at
    them. Components no operation reaches (APIFlask's `Parent.Child` keys) are dropped."""
    wanted: list[tuple[type[BaseModel], JsonSchemaMode]] = []
    for view in views.values():
        for model, mode in _models_of(view):
            if (model, mode) not in wanted:
                wanted.append((model, mode))
    refs, top = models_json_schema(
        wanted, ref_template=REF_PREFIX + "{model}", schema_generator=_Generator
    )
    names = {name: name.replace("-", "") for name in top.get("$defs", {})}
    schemas = {names[name]: schema for name, schema in top.get("$defs", {}).items()}
    for name, schema in schemas.items():
        schema["title"] = name
    _rename_refs(schemas, names)
    spec.setdefault("components", {})["schemas"] = schemas

    def ref_of(model: type[BaseModel], mode: JsonSchemaMode) -> dict[str, Any]:
        found = refs[(model, mode)]
        name = names[found["$ref"].removeprefix(REF_PREFIX)]
        return {"$ref": REF_PREFIX + name}

    for (path, method), view in views.items():
        operation = spec.get("paths", {}).get(path, {}).get(method)
        doc: dict[str, Any] = getattr(view, "_spec", {})
        if operation is None:
            continue
        body = doc.get("body")
        if _is_model(body) and "requestBody" in operation:
            for content in operation["requestBody"]["content"].values():
                content["schema"] = ref_of(body, "validation")
        response = doc.get("response") or {}
        status, output = str(response.get("status_code")), response.get("schema")
        if _is_model(output) and status in operation.get("responses", {}):
            for content in operation["responses"][status].get("content", {}).values():
                content["schema"] = ref_of(output, "serialization")
        for model, location in doc.get("args", []):
            if location == "query" and _is_model(model):
                query = schemas[ref_of(model, "validation")["$ref"].removeprefix(REF_PREFIX)]
                operation["parameters"] = _query_parameters(operation, query)
    _drop_unreferenced(spec)
    _say_defaults(schemas)
    return spec


def _models_of(view: Callable[..., Any]) -> Iterator[tuple[type[BaseModel], JsonSchemaMode]]:
    doc: dict[str, Any] = getattr(view, "_spec", {})
    body = doc.get("body")
    if _is_model(body):
        yield body, "validation"
    for model, _location in doc.get("args", []):
        if _is_model(model):
            yield model, "validation"
    output = (doc.get("response") or {}).get("schema")
    if _is_model(output):
        yield output, "serialization"


def _is_model(value: Any) -> TypeGuard[type[BaseModel]]:
    return isinstance(value, type) and issubclass(value, BaseModel)


def _query_parameters(operation: dict[str, Any], query: dict[str, Any]) -> list[dict[str, Any]]:
    """The operation's parameters with its query ones taken from the query model."""
    kept = [p for p in operation.get("parameters", []) if p.get("in") != "query"]
    required = set(query.get("required", []))
    for name, schema in copy.deepcopy(query.get("properties", {})).items():
        schema = _without_null(schema)
        if _DEFAULT in schema:  # a parameter's default is no trouble to generators
            schema["default"] = schema.pop(_DEFAULT)
        parameter: dict[str, Any] = {"name": name, "in": "query", "required": name in required}
        if "description" in schema:
            parameter["description"] = schema.pop("description")
        parameter["schema"] = schema
        kept.append(parameter)
    return kept


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    choices = [c for c in schema.get("anyOf", []) if c != _NULL]
    if "anyOf" in schema and len(choices) == 1:
        outer = {k: v for k, v in schema.items() if k != "anyOf"}
        return {**choices[0], **outer}
    return schema


def _say_defaults(node: Any) -> None:
    """`x-request-default` (a request field's default) as a sentence of its description."""
    if isinstance(node, dict):
        if _DEFAULT in node:
            said = f"Default: `{json.dumps(node.pop(_DEFAULT))}`."
            node["description"] = f"{node['description']} {said}" if "description" in node else said
        for value in node.values():
            _say_defaults(value)
    elif isinstance(node, list):
        for value in node:
            _say_defaults(value)


def _rename_refs(node: Any, names: dict[str, str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(REF_PREFIX):
            node["$ref"] = REF_PREFIX + names[ref.removeprefix(REF_PREFIX)]
        for value in node.values():
            _rename_refs(value, names)
    elif isinstance(node, list):
        for value in node:
            _rename_refs(value, names)


def _drop_unreferenced(spec: dict[str, Any]) -> None:
    """Keep the components that the paths reach, directly or through other components."""
    schemas = spec["components"]["schemas"]
    reached: set[str] = set()
    pending = list(_refs_in(spec.get("paths", {})))
    while pending:
        name = pending.pop()
        if name in reached or name not in schemas:
            continue
        reached.add(name)
        pending.extend(_refs_in(schemas[name]))
    for name in list(schemas):
        if name not in reached:
            del schemas[name]


def _refs_in(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(REF_PREFIX):
            yield ref.removeprefix(REF_PREFIX)
        for value in node.values():
            yield from _refs_in(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs_in(value)
