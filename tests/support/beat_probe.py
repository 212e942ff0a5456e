"""Beat's failover probe: the names the test and its Celery app (beat_probe_app) share.

Beats and workers load `APP`; each run of the probe job appends the period it ran for
to the Redis list `RUNS_KEY` (the app's Redis), so the test counts what actually ran.
"""

from __future__ import annotations

from typing import Final

APP: Final = "tests.support.beat_probe_app:celery_app"
PROBE_TASK: Final = "beatprobe.run"
PROBE_ENTRY: Final = "beat-probe"
PERIOD_SECONDS: Final = 5.0
RUNS_KEY: Final = "beat-probe:runs"
