#!/bin/bash
# Build the appliance's wheel from this checkout into OUTDIR; prints its path.
#
#   states/build-wheel.sh OUTDIR
#
# Reproducible: the sources are copied aside (the checkout gets no build/ or
# egg-info) and SOURCE_DATE_EPOCH is fixed, so the same sources give the same
# bytes, and re-applying the states with a rebuilt wheel changes nothing.
# BUILD_PYTHON: an interpreter with pip (default: the checkout's .venv, else /usr/bin/python3).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${1:?usage: $0 OUTDIR}
PY=${BUILD_PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x "$REPO/.venv/bin/python" ]; then PY=$REPO/.venv/bin/python; else PY=/usr/bin/python3; fi
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/src" "$work/out" "$OUT"
cp -a "$REPO/pyproject.toml" "$REPO/appliance" "$REPO/services" "$work/src/"
find "$work/src" \( -name __pycache__ -o -name '*.egg-info' \) -prune -exec rm -rf {} +
find "$work/src" -exec touch -h -d @315532800 {} +
SOURCE_DATE_EPOCH=315532800 PYTHONDONTWRITEBYTECODE=1 \
  "$PY" -m pip wheel -q --disable-pip-version-check --no-deps -w "$work/out" "$work/src" >&2
whl=$(ls "$work/out"/*.whl)
cp "$whl" "$OUT/"
echo "$OUT/$(basename "$whl")"
