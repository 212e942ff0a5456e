"""GET /docs: Swagger UI for /openapi.json, every byte of it served by this app.

The assets are Swagger UI's own build, shipped by the pinned `flask-swagger-ui` package
(requirements.txt; only its `dist/` is used, not its blueprint, whose page has an inline
script). The page has no inline script or style and no external URL, so it renders with
no internet access and under the strict Content-Security-Policy that
blueprints/common/security.py gives /docs: scripts, styles and requests to this origin
only. The spec's URL reaches the script as a data attribute, not as inline code.

A plain Flask blueprint: these pages are not part of the API, so not in its document.
"""

from __future__ import annotations

from pathlib import Path

import flask_swagger_ui
from flask import Blueprint, Response, current_app, render_template, send_from_directory, url_for

# Swagger UI's distribution: swagger-ui-bundle.js, swagger-ui.css, index.css, favicons.
SWAGGER_UI_DIST = Path(flask_swagger_ui.__file__).resolve().parent / "dist"
# Revalidated after an hour (ETag); a new pin changes the files and so the ETags.
ASSET_MAX_AGE = 3600

bp = Blueprint(
    "docs", __name__, url_prefix="/docs", template_folder="templates", static_folder="static"
)


@bp.get("")
def page() -> str:
    """The documentation page (HTML)."""
    # APIFlask's title and version, as in the document itself.
    title = f"{getattr(current_app, 'title', 'API')} {getattr(current_app, 'version', '')}"
    return render_template("docs/index.html", title=title.strip(), spec_url=url_for("openapi.spec"))


@bp.get("/swagger-ui/<path:filename>")
def swagger_ui(filename: str) -> Response:
    """Swagger UI's scripts, styles and icons (404 for anything it does not ship)."""
    return send_from_directory(SWAGGER_UI_DIST, filename, max_age=ASSET_MAX_AGE)
