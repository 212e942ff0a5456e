#!/usr/bin/env bash
# Node.js and npm for the JavaScript tooling (OpenAPI linters, the typed client): the
# machine's own, or Debian's packages when missing, so `make` installs them like the rest.
set -euo pipefail
if command -v node >/dev/null && command -v npm >/dev/null; then
    exit 0
fi
echo "node/npm not found: installing Debian's nodejs and npm ..."
sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
node --version
