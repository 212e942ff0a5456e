"""Where the suite keeps its files: the repository root and the logs of this test process.

Under pytest-xdist every worker process (gw0, gw1, ...) logs into a folder of its own, so
two workers never read each other's `ready.` line or gunicorn log.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LOGS = ROOT / "var" / "test-logs" / os.environ.get("PYTEST_XDIST_WORKER", "main")
