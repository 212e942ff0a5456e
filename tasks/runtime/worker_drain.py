"""Deploys: SIGTERM drains a worker within WORKER_SHUTDOWN_GRACE_SECONDS.

Celery's warm shutdown (SIGTERM, or the first Ctrl-C) stops taking tasks and waits for the
running ones, for as long as they take. Celery's own bound, `worker_soft_shutdown_timeout`,
only applies to a cold shutdown (SIGQUIT, or SIGTERM remapped with REMAP_SIGTERM=SIGQUIT)
and then sleeps its whole timeout even when the tasks finish in a second. So the worker
keeps Celery's warm shutdown, and a timer started on SIGTERM turns it into Celery's cold
shutdown (SIGQUIT to itself) once the grace period is over:

- tasks that finish within the grace period are acknowledged as usual, and the worker
  exits as soon as the last one is done;
- tasks still running then are cancelled (their pool processes terminated). Their
  messages were never acknowledged (acks_late), and kombu puts unacknowledged messages
  back on their queue when the worker closes its broker connection, so the next worker
  runs them. Their job rows prevent a double effect: the new worker claims the job again
  (its old owner is provably gone, or its heartbeat goes stale), and the work's effects
  commit once, together with `succeeded`. Should the whole host vanish instead, the
  reaper re-enqueues the job once its heartbeat is stale.

The process manager's kill timeout must leave room for this: Kubernetes
`terminationGracePeriodSeconds` (30 s by default), `docker stop -t`, systemd
`TimeoutStopSec` above the grace period plus ~10 s. Send SIGTERM to the main process only
(what Kubernetes and Docker do; systemd needs `KillMode=mixed`): pool processes that get
SIGTERM themselves die at once and leave their tasks to redelivery.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

from celery import signals
from celery.worker import state as worker_state

from config import Settings
from logs import get_logger

log = get_logger(__name__)

_grace_seconds: float | None = None
_timer: threading.Timer | None = None


def install(settings: Settings) -> None:
    """Bound the warm shutdown of workers started in this process."""
    global _grace_seconds
    _grace_seconds = settings.worker_shutdown_grace_seconds
    signals.worker_shutting_down.connect(_on_shutting_down, weak=False, dispatch_uid=__name__)


def _on_shutting_down(sig: str = "", how: str = "", exitcode: int = 0, **_kw: Any) -> None:
    """Celery sends this from the main process's signal handler, once per signal."""
    global _timer
    if how != "Warm" or _grace_seconds is None or _timer is not None:
        return
    log.info(
        "worker_draining",
        signal=sig,
        grace_seconds=_grace_seconds,
        running=len(worker_state.active_requests),
    )
    _timer = threading.Timer(_grace_seconds, _grace_expired)
    _timer.daemon = True  # a drained worker exits without waiting for it
    _timer.start()


def _grace_expired() -> None:
    running = sorted(request.id for request in list(worker_state.active_requests))
    log.warning(
        "worker_grace_expired",
        grace_seconds=_grace_seconds,
        cancelled=running,
        detail="cancelling running tasks; their messages go back to the queue",
    )
    os.kill(os.getpid(), signal.SIGQUIT)  # Celery's cold shutdown
