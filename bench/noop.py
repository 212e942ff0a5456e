"""The queue benchmarks' baseline task: a bare Celery no-op (B4, B5).

Registered only where the benchmarks ask for it, never in production: the benchmark's own
process imports this module, and the workers it starts run the production entry point
with `celery -A make_celery:celery_app worker --include bench.noop`. Its base is Celery's
plain `Task` (not the app's, which pushes a Flask app context per call), so it costs
exactly what the broker and the prefork pool cost per message: the physical limit that
the job tasks are compared with.
"""

from __future__ import annotations

from celery import Task

from extensions import celery_app

NAME = "bench.noop"  # routes to the `default` queue (celeryconfig.queue_for)


@celery_app.task(name=NAME, base=Task, ignore_result=True, acks_late=True)  # type: ignore[untyped-decorator]
def noop() -> None:
    """Nothing at all."""
