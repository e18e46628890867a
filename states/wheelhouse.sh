#!/bin/bash
# Build (once) a wheelhouse of Salt and of the appliance's dependencies, so that
# installing into a fresh tree does not compile timelib and re-download
# everything each time. Wheels of the same interpreter (Debian 12's
# /usr/bin/python3 3.11) work inside the debootstrap tree.
#
#   states/wheelhouse.sh            -> prints the wheelhouse directory
#
# The cache lives outside the checkout:
# ${APPLIANCE_CACHE:-/var/cache/isp-appliance}/wheels. It only adds wheels, so
# it is safe to share between runs; a stamp names what it was built for.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
CACHE=${APPLIANCE_CACHE:-/var/cache/isp-appliance}
WH=$CACHE/wheels
SALT_PIN=$(sed -n 's/^salt==//p' "$REPO/constraints.txt")
SALT_PIN=${SALT_PIN:-3008.4}
mkdir -p "$WH"
exec 9>"$CACHE/.wheels.lock"
flock 9
stamp="salt==$SALT_PIN $(sha256sum "$REPO/constraints.txt" | cut -c1-16)"
if [ "$(cat "$WH/.stamp" 2>/dev/null)" = "$stamp" ]; then
  echo "$WH"
  exit 0
fi
start=$(date +%s)
echo "wheelhouse: building salt==$SALT_PIN and the appliance's dependencies (compiles timelib: a few minutes)..." >&2
# A clean environment: no pip config of this machine leaks in, only PyPI.
PY=/usr/bin/python3
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
  PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_CONFIG_FILE=/dev/null \
  "$PY" -m pip wheel -q -w "$WH" "salt==$SALT_PIN" >&2
# The project's own dependencies, pinned (the project wheel itself is built per checkout).
grep -v -E '^(salt|pytest|ruff|py-spy|iniconfig|pluggy|Pygments)==' "$REPO/constraints.txt" >"$WH/.runtime-requirements.txt"
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
  PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_CONFIG_FILE=/dev/null \
  "$PY" -m pip wheel -q -w "$WH" -r "$WH/.runtime-requirements.txt" setuptools wheel >&2
echo "$stamp" >"$WH/.stamp"
echo "wheelhouse: done in $(( $(date +%s) - start ))s" >&2
echo "$WH"
