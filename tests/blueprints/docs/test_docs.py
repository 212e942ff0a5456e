"""/docs works anywhere: every byte of the page comes from this app (no CDN, so it renders
with the network cut off) and nothing in it needs an inline script or style (so it renders
under the strict Content-Security-Policy it is served with)."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from flask.testing import FlaskClient

# Any absolute URL: a scheme, or a protocol-relative `//host`.
ABSOLUTE_URL = re.compile(r"[a-z][a-z0-9+.-]*://|(?<![:/])//[a-z0-9]", re.IGNORECASE)


class PageReferences(HTMLParser):
    """What a browser would load for the page: scripts, stylesheets, icons, images, and
    the URLs the page hands its scripts (`data-*-url`, the spec's); and what a strict
    CSP would block: inline scripts, style elements and style attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.assets: list[tuple[str, str]] = []  # (kind, url)
        self.inline_code: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {name: value or "" for name, value in attrs}
        if tag == "script":
            if found.get("src"):
                self.assets.append(("script", found["src"]))
            else:
                self.inline_code.append("<script> without src")
        elif tag == "link" and found.get("href"):
            self.assets.append((found.get("rel", "link"), found["href"]))
        elif tag in ("img", "iframe", "source") and found.get("src"):
            self.assets.append((tag, found["src"]))
        elif tag == "style":
            self.inline_code.append("<style>")
        if "style" in found:
            self.inline_code.append(f"style attribute on <{tag}>")
        for name, value in found.items():
            if name.startswith("on"):
                self.inline_code.append(f"{name} handler on <{tag}>")
            if name.startswith("data-") and name.endswith("-url"):
                self.assets.append((name, value))


EXPECTED_TYPES = {
    "script": ("text/javascript", "application/javascript"),
    "stylesheet": ("text/css",),
    "icon": ("image/png",),
    "data-spec-url": ("application/json",),
}


def test_docs_page_and_every_asset_it_references_are_served_by_the_app(
    client: FlaskClient,
) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    assert page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert not ABSOLUTE_URL.search(html), ABSOLUTE_URL.search(html)

    references = PageReferences()
    references.feed(html)
    assert references.inline_code == []
    kinds = {kind for kind, _ in references.assets}
    assert {"script", "stylesheet", "icon", "data-spec-url"} <= kinds, references.assets
    for kind, url in references.assets:
        assert url.startswith("/") and not url.startswith("//"), url  # this app, this origin
        asset = client.get(url)
        assert asset.status_code == 200, (kind, url, asset.status_code)
        assert asset.mimetype in EXPECTED_TYPES[kind], (kind, url, asset.mimetype)
        assert asset.data, url
        if kind == "data-spec-url":
            assert asset.get_json()["openapi"].startswith("3.")
        if kind == "script" and "/swagger-ui/" not in url:
            # Our initializer: it takes the spec's URL from the page, fetches nothing else.
            code = asset.get_data(as_text=True)
            assert "data-spec-url" in code and "validatorUrl: null" in code
            assert not ABSOLUTE_URL.search(code)


def test_docs_run_under_a_strict_content_security_policy(client: FlaskClient) -> None:
    """Scripts, styles and requests from this origin only: no inline code, no CDN."""
    for path in ("/docs", "/docs/swagger-ui/swagger-ui-bundle.js"):
        policy = client.get(path).headers["Content-Security-Policy"]
        directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
        assert directives["default-src"] == "'none'"
        assert directives["script-src"] == "'self'"
        assert directives["style-src"] == "'self'"
        assert directives["connect-src"] == "'self'"  # the spec and "Try it out"
        assert directives["frame-ancestors"] == "'none'"
        assert "unsafe" not in policy and "http" not in policy
    # Everything else keeps the API's policy, which allows nothing at all.
    api = client.get("/openapi.json").headers["Content-Security-Policy"]
    assert api.startswith("default-src 'none'") and "script-src" not in api


def test_docs_serve_only_swagger_uis_own_files(client: FlaskClient) -> None:
    assert client.get("/docs/swagger-ui/missing.js").status_code == 404
    assert client.get("/docs/swagger-ui/../flask_swagger_ui.py").status_code == 404
    assert client.get("/docs/swagger-ui/%2e%2e/flask_swagger_ui.py").status_code == 404
