"""The baseline web app: a bare Flask hello-world route, served by the same gunicorn.conf.py.

`gunicorn -c gunicorn.conf.py bench.hello:app`: the most a route can do per second on this
machine with our server configuration, before any of our code runs.
"""

from __future__ import annotations

from flask import Flask

app = Flask(__name__)


@app.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/hello")
def hello() -> dict[str, str]:
    return {"hello": "world"}
