"""The HTTP perimeter: trusted proxies, CORS for our frontends, security headers, and no
cookie session."""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, request
from flask.sessions import SecureCookieSession, SessionInterface
from flask_cors import CORS
from werkzeug.middleware.proxy_fix import ProxyFix

from config import Settings

# A JSON API never needs to be framed, sniffed or to load anything.
_API_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-site",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
}
# The documentation page (blueprints/docs) runs Swagger UI: scripts, styles, images and
# requests (the spec, "Try it out") from this origin only, plus the data: images in
# Swagger UI's stylesheet. No inline script or style, nothing from elsewhere.
_DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


class NoCookieSession(SessionInterface):
    """No cookie session: callers authenticate with a token or an API key on every request,
    and a signed cookie would be a second credential nobody checks. Flask's default opened
    (unsigned and verified) one per request all the same; `flask.session` is now the null
    session, which refuses any write."""

    def open_session(self, app: Flask, request: Any) -> SecureCookieSession | None:
        return None  # Flask then uses make_null_session

    def save_session(self, app: Flask, session: Any, response: Response) -> None:
        return None


def register_security(app: Flask, settings: Settings) -> None:
    app.session_interface = NoCookieSession()
    if settings.trusted_proxies > 0:
        # Only this many hops of X-Forwarded-For/-Proto are believed; a client cannot spoof
        # its address into rate limits or audit rows by sending the header itself.
        n = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n)  # type: ignore[method-assign]
    CORS(
        app,
        resources={r"/api/*": {"origins": settings.cors_origin_list}},
        allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "X-API-Key",
                       "X-Request-ID", "Last-Event-ID"],
        expose_headers=["Location", "X-Request-ID", "Retry-After", "Idempotent-Replayed",
                        "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"],
        max_age=600,
    )  # fmt: skip

    @app.after_request
    def _security_headers(response: Response) -> Response:
        # One pass over what the response has (setdefault scans the headers per name).
        present = {name.lower() for name in response.headers.keys()}  # noqa: SIM118 - Headers
        docs = request.path == "/docs" or request.path.startswith("/docs/")
        for name, value in _API_HEADERS.items():
            if name.lower() in present:
                continue
            if docs and name == "Content-Security-Policy":
                response.headers.add(name, _DOCS_CSP)
            else:
                response.headers.add(name, value)
        if request.is_secure:
            response.headers["Strict-Transport-Security"] = "max-age=31536000; includeSubDomains"
        if "Authorization" in request.headers or "X-API-Key" in request.headers:
            response.headers.setdefault("Cache-Control", "no-store")  # personal data
        return response
