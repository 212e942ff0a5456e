"""B9's "auth off" web app: the production app plus ONE bench-only route, never deployed.

`gunicorn -c gunicorn.conf.py 'bench.app_noauth:create_noauth_app()'`, with the same
settings as the app under test except RATELIMIT_ENABLED=false (the limiter's off switch
is a setting).

Why a separate entry point rather than a setting: authentication must have no off switch
in the product, not even a test-only one, because a switch that exists can be left on.
So this module, which only the benchmark uses, builds the real app with
`create_app()` and adds `GET /bench/noauth/jobs/<job_id>`: the very view behind
`GET /api/v1/jobs/<job_id>` (its body and its `@bp.output` serialisation, reached
through the `__wrapped__` that `functools.wraps` leaves on `@auth_required`'s wrapper)
with only `authenticate()` skipped. Everything else a request goes through is identical:
request id, content-type check, metrics, access log, security headers, CORS, the session
and its teardown.

Without authentication there is no verified identity, so the caller names the job's owner
in an `X-Bench-User` header and the route uses a transient `User` with that id (no
token verified, no revocation check in Redis, no user row loaded: exactly the work
`authenticate()` does). The job lookup and its ownership check stay, as in production.
"""

from __future__ import annotations

import uuid
from typing import Any

from apiflask import APIFlask
from flask import g, request

from app import create_app
from blueprints.jobs import views as job_views
from models import User

APP = "bench.app_noauth:create_noauth_app()"  # for gunicorn
BENCH_USER_HEADER = "X-Bench-User"
NOAUTH_JOB_PATH = "/bench/noauth/jobs"


def create_noauth_app() -> APIFlask:
    """The app from the environment's settings, plus the unauthenticated job route."""
    app = create_app()
    # GET /api/v1/jobs/<id> without its @auth_required wrapper (output serialisation kept).
    unguarded_get_job = job_views.get_job.__wrapped__  # type: ignore[attr-defined]

    @app.get(f"{NOAUTH_JOB_PATH}/<uuid:job_id>")
    def noauth_get_job(job_id: uuid.UUID) -> Any:
        """BENCH ONLY: GET /api/v1/jobs/<job_id> as the X-Bench-User user, unverified."""
        g.user = User(id=uuid.UUID(request.headers[BENCH_USER_HEADER]), is_admin=False)
        return unguarded_get_job(job_id=job_id)

    return app
