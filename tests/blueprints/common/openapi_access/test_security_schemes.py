"""The OpenAPI document keeps every operation's security when a doc decorator sits above
an auth guard.
"""

from __future__ import annotations

from apiflask import APIFlask

from blueprints.common.auth import admin_required, auth_required
from blueprints.common.openapi import register_openapi


def test_a_doc_decorator_above_an_auth_guard_keeps_the_operations_security() -> None:
    """APIFlask's `@doc(...)` writes `security=None` into the view it decorates; placed
    above `@auth_required`, it documented guarded operations as open to anyone."""
    app = APIFlask(__name__)
    register_openapi(app)  # as create_app does: it writes the guards' security out

    @app.post("/guarded")
    @app.doc(responses={409: "A conflict of this route's own"})
    @auth_required
    def guarded() -> dict[str, str]:
        return {}

    @app.post("/operators")
    @app.doc(responses={409: "Another one"})
    @admin_required
    def operators() -> dict[str, str]:
        return {}

    spec = app.spec
    assert isinstance(spec, dict)
    paths = spec["paths"]
    assert paths["/guarded"]["post"]["security"] == [{"BearerAuth": []}, {"ApiKeyAuth": []}]
    assert paths["/operators"]["post"]["security"] == [{"BearerAuth": []}]
    assert "409" in paths["/guarded"]["post"]["responses"]
