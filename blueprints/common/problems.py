"""RFC 9457 problem+json for every error the app can produce; never HTML, never a trace."""

from __future__ import annotations

from typing import Any

import psycopg
import redis.exceptions
from apiflask import APIFlask
from apiflask.exceptions import HTTPError
from flask import Response, g, json
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException
from werkzeug.http import HTTP_STATUS_CODES

from logs import get_logger
from services.core.errors import ServiceError

PROBLEM_MIMETYPE = "application/problem+json"
TYPE_BASE = "https://docs.maycole.dev/problems/"
log = get_logger(__name__)
# RFC 9110's names where they differ from Werkzeug's older ones.
_TITLES = {413: "Content Too Large", 422: "Unprocessable Content"}


def problem(
    status: int,
    detail: str | None = None,
    *,
    title: str | None = None,
    type_slug: str | None = None,
    errors: dict[str, list[str]] | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Response:
    """Build a problem+json response carrying the request id."""
    title = title or _TITLES.get(status) or HTTP_STATUS_CODES.get(status, "Error")
    body: dict[str, Any] = {
        "type": TYPE_BASE + (type_slug or title.lower().replace(" ", "-")),
        "title": title,
        "status": status,
        "detail": detail or title,
    }
    if errors:
        body["errors"] = errors
    if extra:
        body.update(extra)
    body["request_id"] = g.get("request_id")
    response = Response(json.dumps(body), status=status, mimetype=PROBLEM_MIMETYPE)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _flatten_validation(detail: Any) -> dict[str, list[str]]:
    """APIFlask reports {location: {field: [msgs]}}; clients want {field: [msgs]}.

    Field names are unique across a route's body, query and path, so the location goes.
    """
    errors: dict[str, list[str]] = {}
    if not isinstance(detail, dict):
        return errors
    for fields in detail.values():
        if not isinstance(fields, dict):
            continue
        for name, messages in fields.items():
            errors[name] = (
                [str(m) for m in messages] if isinstance(messages, list) else [str(messages)]
            )
    return errors


def register_error_handlers(app: APIFlask) -> None:
    """Route every failure to problem+json."""

    @app.error_processor
    def _apiflask_error(error: HTTPError) -> Response:
        # Validation failures and `abort()` from APIFlask.
        errors = _flatten_validation(error.detail) if error.status_code == 422 else None
        detail = "The request body or parameters are invalid." if errors else error.message
        return problem(
            error.status_code,
            detail,
            type_slug="validation-error" if errors else None,
            errors=errors,
            headers={k: str(v) for k, v in dict(error.headers or {}).items()},
        )

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> Response:
        headers = {k: v for k, v in error.get_headers() if k.lower() != "content-type"}
        status = error.code or 500
        return problem(status, error.description, headers=headers)

    @app.errorhandler(ServiceError)
    def _service_error(error: ServiceError) -> Response:
        return problem(
            error.status,
            error.detail,
            title=error.title,
            type_slug=error.type_slug,
            errors=error.errors,
            headers=error.headers,
            extra=error.extra,
        )

    @app.errorhandler(DBAPIError)
    def _database_down(error: DBAPIError) -> Response:
        if not error.connection_invalidated and not _is_connection_error(error):
            return _unexpected(error)
        log.warning("dependency_unavailable", dependency="postgresql", error=type(error).__name__)
        return problem(
            503,
            "The database is unavailable; try again shortly.",
            type_slug="dependency-unavailable",
            headers={"Retry-After": "5"},
        )

    @app.errorhandler(PoolTimeout)
    def _database_busy(_error: PoolTimeout) -> Response:
        # Every pooled connection stayed in use for DB_POOL_TIMEOUT_SECONDS: the client may
        # try again, as for a database that is down.
        log.warning("dependency_unavailable", dependency="postgresql", error="PoolTimeout")
        return problem(
            503,
            "The database is busy; try again shortly.",
            type_slug="dependency-unavailable",
            headers={"Retry-After": "5"},
        )

    @app.errorhandler(redis.exceptions.ConnectionError)
    @app.errorhandler(redis.exceptions.TimeoutError)
    @app.errorhandler(BrokerError)
    def _redis_down(error: Exception) -> Response:
        log.warning("dependency_unavailable", dependency="redis", error=type(error).__name__)
        return problem(
            503,
            "A backing service is unavailable; try again shortly.",
            type_slug="dependency-unavailable",
            headers={"Retry-After": "5"},
        )

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        log.exception("unhandled_error", error=type(error).__name__)
        return problem(500, "An unexpected error occurred; it has been logged.")


def _is_connection_error(error: DBAPIError) -> bool:
    return isinstance(error.orig, psycopg.OperationalError)
