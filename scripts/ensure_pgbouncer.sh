#!/usr/bin/env bash
# PgBouncer for `make test-pgbouncer` (scripts/dev_pgbouncer.py): the machine's own, or
# Debian's package when missing, so `make` installs it like node and the Python packages.
set -euo pipefail
if command -v pgbouncer >/dev/null || [ -x /usr/sbin/pgbouncer ]; then
    exit 0
fi
echo "pgbouncer not found: installing Debian's pgbouncer ..."
sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
$sudo apt-get update -qq
# The package's own service stays down: policy-rc.d refuses starts where there is one, and
# dev_pgbouncer.py runs a private pgbouncer with a config of its own either way.
$sudo apt-get install -y -qq --no-install-recommends pgbouncer >/dev/null
"$(command -v pgbouncer || echo /usr/sbin/pgbouncer)" --version
