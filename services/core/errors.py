"""Typed errors that carry their HTTP meaning; one handler renders them as problem+json."""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """Base class: a failure the caller can understand and act on."""

    status = 400
    title = "Bad Request"
    type_slug = "bad-request"

    def __init__(
        self,
        detail: str,
        *,
        errors: dict[str, list[str]] | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        self.headers = headers or {}
        self.extra = extra or {}


class Unauthorized(ServiceError):
    status, title, type_slug = 401, "Unauthorized", "unauthorized"


class Forbidden(ServiceError):
    status, title, type_slug = 403, "Forbidden", "forbidden"


class NotFound(ServiceError):
    status, title, type_slug = 404, "Not Found", "not-found"


class Conflict(ServiceError):
    status, title, type_slug = 409, "Conflict", "conflict"


class ValidationFailed(ServiceError):
    status, title, type_slug = 422, "Unprocessable Content", "validation-error"


class DependencyUnavailable(ServiceError):
    status, title, type_slug = 503, "Service Unavailable", "dependency-unavailable"

    def __init__(self, detail: str, *, retry_after: int = 5, **kw: Any) -> None:
        super().__init__(detail, **kw)
        self.headers.setdefault("Retry-After", str(retry_after))


class TooManyRequests(ServiceError):
    """A business limit (not the HTTP rate limiter) says: not now; Retry-After says when."""

    status, title, type_slug = 429, "Too Many Requests", "too-many-requests"

    def __init__(self, detail: str, *, retry_after: int, **kw: Any) -> None:
        super().__init__(detail, **kw)
        self.headers.setdefault("Retry-After", str(max(1, retry_after)))
