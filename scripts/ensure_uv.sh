#!/usr/bin/env bash
# Usage: scripts/ensure_uv.sh VENV LOCK
# The virtualenv VENV and uv in VENV/bin, at the version and hashes that LOCK pins, so that
# `make` can install the locks with it (uv installs in seconds what pip took minutes for).
# The venv is made without pip (0.2 s instead of 4 s: uv needs none), and uv is fetched by
# the pip beside python3, or, where python3 has none, by the venv's own from ensurepip.
set -euo pipefail
venv=$1
lock=$2
# Make puts VENV/bin first on PATH: the base interpreter is the one found before it exists.
python=$(command -v python3)
test -x "$venv/bin/python" || "$python" -m venv --without-pip "$venv"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# uv's entry in the lock: its `uv==X \` line and the indented hash and comment lines below.
awk '/^uv==/ { keep = 1; print; next } keep && /^ / { print; next } { keep = 0 }' \
    "$lock" >"$work/uv.txt"
if [ ! -s "$work/uv.txt" ]; then
    echo "ensure_uv: $lock pins no uv (requirements-run.txt must list uv==X, then make lock)" >&2
    exit 1
fi
echo "installing $(head -n1 "$work/uv.txt" | cut -d' ' -f1) into $venv ..."
pip=("$python" -m pip)
if ! "${pip[@]}" --version >/dev/null 2>&1; then
    "$venv/bin/python" -m ensurepip --default-pip >/dev/null
    pip=("$venv/bin/python" -m pip)
fi
# Its output only if it fails: the machine's pip.conf may add warnings about its own indexes.
if ! "${pip[@]}" install --quiet --disable-pip-version-check --root-user-action=ignore \
    --no-deps --require-hashes --target "$work/uv" -r "$work/uv.txt" >"$work/pip.log" 2>&1; then
    cat "$work/pip.log" >&2
    exit 1
fi
install -m 755 "$work/uv/bin/uv" "$venv/bin/uv"
