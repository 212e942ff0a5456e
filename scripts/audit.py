"""`make audit`: every pin we install against the known-vulnerability database.

pip-audit reads requirements-dev.lock, which holds every transitive pin of every layer
(the runtime's, `make run`'s and the tools', scripts/locks.py) with its hashes, so nothing
is resolved or installed, and asks its vulnerability service about each. A pin with a
known vulnerability fails the run, listing the advisory and the first fixed version.
Where the service cannot be reached (a build machine that sees only a package mirror),
pip-audit can audit nothing: that is said loudly and fails only with AUDIT_STRICT=1, so
CI on such a machine still runs the tests, while a machine that can reach the service
gets the real verdict.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The top layer: the runtime's and `make run`'s locks are subsets of it, at the same versions.
LOCK = "requirements-dev.lock"


def main() -> int:
    command = [sys.executable, "-m", "pip_audit", "--disable-pip", "--require-hashes",
               "--format", "json", "--progress-spinner", "off", "-r", str(ROOT / LOCK)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        print(done.stdout + done.stderr, file=sys.stderr)
        print("audit: pip-audit did not produce a report", file=sys.stderr)
        return 1
    dependencies = report.get("dependencies", [])
    vulnerable = [d for d in dependencies if d.get("vulns")]
    audited = [d for d in dependencies if "skip_reason" not in d]
    for dep in vulnerable:
        for vuln in dep["vulns"]:
            fixed = ", ".join(vuln.get("fix_versions") or []) or "no fix yet"
            print(f"VULNERABLE {dep['name']}=={dep['version']}: {vuln['id']} (fixed in {fixed})")
    if vulnerable:
        return 1
    if not audited:
        print(f"audit: could NOT audit {len(dependencies)} pins: the vulnerability service "
              "is unreachable from this machine (pip-audit needs pypi.org's JSON API or "
              "osv.dev). Run `make audit` where it is reachable.")  # fmt: skip
        return 1 if os.environ.get("AUDIT_STRICT") == "1" else 0
    skipped = len(dependencies) - len(audited)
    print(f"audit: {len(audited)} pins of {LOCK} audited, no known vulnerabilities"
          + (f" ({skipped} could not be audited)" if skipped else ""))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
