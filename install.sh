#!/bin/bash
# Install the ISP Mail Appliance on this Debian 12 host (a rented 1U, a VM) from
# this checkout, with Salt, masterless:
#
#   sudo ./install.sh path/to/pillar.sls [salt-call arguments...]
#
# e.g. `sudo ./install.sh my.sls test=True` shows what would change, and
# `sudo ./install.sh my.sls --out=json` prints the result as JSON.
#
# 1. apt: python3, python3-venv and, to build Salt's timelib, gcc + python3-dev;
# 2. Salt (salt==3008.4, the pin in constraints.txt) in its own venv of Debian's
#    /usr/bin/python3: PREFIX/salt;
# 3. the appliance as a wheel built from this checkout, staged with the states
#    and constraints.txt in PREFIX/src (the box keeps what it was built from);
# 4. the pillar in PREFIX/pillar (mode 0600: it may hold secrets; appliance.sls there is
#    the last pillar applied without error: `sudo PREFIX/src/install.sh PREFIX/pillar/appliance.sls`
#    re-applies it);
# 5. `salt-call --local state.apply` (states/top.sls -> the appliance formula).
#
# Running it again re-applies: the second run changes nothing.
# Environment: APPLIANCE_PREFIX (default /opt/appliance); APPLIANCE_WHEEL: use
# this wheel instead of building one; PIP_FIND_LINKS etc. are passed to pip.
# states/apply.sh runs this script inside a chroot for the image build.
set -euo pipefail

PREFIX=${APPLIANCE_PREFIX:-/opt/appliance}
SALT_VENV=$PREFIX/salt
SRC=$PREFIX/src
PILLAR_DIR=$PREFIX/pillar
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

die() { echo "install.sh: $*" >&2; exit 1; }
say() { echo "install.sh: $*" >&2; }

[ $# -ge 1 ] || die "usage: sudo $0 path/to/pillar.sls [salt-call arguments...]"
PILLAR=$1
shift
[ "$(id -u)" = 0 ] || die "must run as root (sudo $0 $PILLAR)"
[ -f "$PILLAR" ] && [ -r "$PILLAR" ] || die "$PILLAR: no such pillar file (start from states/pillar.example)"
grep -q '^appliance:' "$PILLAR" || die "$PILLAR: the pillar must have the top-level key 'appliance:' (see states/pillar.example)"
[ -d "$REPO/states/appliance" ] || die "$REPO/states/appliance: missing (run install.sh from the checkout)"
# shellcheck disable=SC1091
. /etc/os-release
[ "${ID:-}" = debian ] && [ "${VERSION_ID:-}" = 12 ] || say "warning: made for Debian 12, this is ${PRETTY_NAME:-unknown}"

SALT_PIN=$(sed -n 's/^salt==//p' "$REPO/constraints.txt")
SALT_PIN=${SALT_PIN:-3008.4}
export DEBIAN_FRONTEND=noninteractive

# --- 1. Debian packages Salt itself needs (the formula installs the rest) -------------
need=()
for p in python3 python3-venv python3-dev gcc ca-certificates systemd; do
  dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed' || need+=("$p")
done
say "apt-get update"
# Not fatal: a box without network (a Vagrant box, a re-apply offline) still re-applies
# with the package lists it has; a package that must be installed then fails visibly.
apt-get update -q >/dev/null || say "warning: apt-get update failed; using the package lists present"
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi

# --- 2. Salt in its own venv ------------------------------------------------------------
if [ "$("$SALT_VENV/bin/python" -c 'import salt.version; print(salt.version.__version__)' 2>/dev/null)" != "$SALT_PIN" ]; then
  say "installing salt==$SALT_PIN into $SALT_VENV (builds timelib: a few minutes on a fresh host)"
  /usr/bin/python3 -m venv "$SALT_VENV"
  "$SALT_VENV/bin/pip" install -q --disable-pip-version-check "salt==$SALT_PIN"
fi

# --- 3. stage the wheel, the states and the pins ----------------------------------------
mkdir -p "$PREFIX"
stage=$(mktemp -d "$PREFIX/.stage.XXXXXX")
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/dist"
if [ -n "${APPLIANCE_WHEEL:-}" ]; then
  [ -f "$APPLIANCE_WHEEL" ] || die "APPLIANCE_WHEEL=$APPLIANCE_WHEEL: no such file"
  cp "$APPLIANCE_WHEEL" "$stage/dist/"
elif [ -f "$REPO/pyproject.toml" ]; then
  say "building the appliance wheel from $REPO"
  BUILD_PYTHON=$SALT_VENV/bin/python "$REPO/states/build-wheel.sh" "$stage/dist" >/dev/null
elif compgen -G "$REPO/dist/*.whl" >/dev/null; then
  cp "$REPO"/dist/*.whl "$stage/dist/"       # a staged copy (PREFIX/src) re-applying itself
else
  die "$REPO: neither a checkout (pyproject.toml) nor a staged copy (dist/*.whl)"
fi
[ "$(find "$stage/dist" -name '*.whl' | wc -l)" = 1 ] || die "expected exactly one wheel, got: $(ls "$stage/dist")"
cp -a "$REPO/states" "$REPO/constraints.txt" "$REPO/install.sh" "$stage/"
find "$stage" -name __pycache__ -prune -exec rm -rf {} +
if [ "$(cd "$REPO" && pwd -P)" != "$(mkdir -p "$SRC" && cd "$SRC" && pwd -P)" ]; then
  rm -rf "$SRC.old"
  [ -d "$SRC" ] && mv "$SRC" "$SRC.old"
  mv "$stage" "$SRC"
  rm -rf "$SRC.old"
  trap - EXIT
else
  # Re-applying from PREFIX/src itself: keep it, only refresh the wheel if one was given.
  if [ -n "${APPLIANCE_WHEEL:-}" ]; then rm -f "$SRC"/dist/*.whl && cp "$stage"/dist/*.whl "$SRC/dist/"; fi
fi

# --- 4. the pillar ------------------------------------------------------------------------
# This run reads the pillar from PILLAR_DIR/run; PILLAR_DIR/appliance.sls is the last
# pillar applied without error (what a later re-apply on the box starts from), so a bad
# pillar never replaces a good one.
install -d -m 0700 "$PILLAR_DIR" "$PILLAR_DIR/run"
[ "$(realpath "$PILLAR")" = "$(realpath -m "$PILLAR_DIR/run/appliance.sls")" ] || install -m 0600 "$PILLAR" "$PILLAR_DIR/run/appliance.sls"
printf "# Written by install.sh.\nbase:\n  '*':\n    - appliance\n" >"$PILLAR_DIR/run/top.sls"

# --- 5. masterless Salt -------------------------------------------------------------------
install -d -m 0700 "$SALT_VENV/etc"
cat >"$SALT_VENV/etc/minion" <<EOF
# Written by install.sh: masterless Salt for the appliance; nothing under /etc/salt.
id: appliance
file_client: local
root_dir: /
pki_dir: $SALT_VENV/etc/pki
cachedir: /var/cache/appliance-salt
sock_dir: /run/appliance-salt
log_file: /var/log/appliance-salt.log
log_level_logfile: info
file_roots:
  base:
    - $SRC/states
pillar_roots:
  base:
    - $PILLAR_DIR/run
# systemd units are managed with systemctl even in a chroot (image build), where
# systemd is not running and Salt would otherwise fall back to sysvinit scripts.
providers:
  service: systemd_service
state_verbose: False
# The console shows the states' results, not Salt's tracebacks (those go to log_file).
log_level: quiet
EOF
say "applying the states (salt-call --local state.apply)"
set +e
"$SALT_VENV/bin/salt-call" --config-dir="$SALT_VENV/etc" --local --retcode-passthrough state.apply "$@"
rc=$?
set -e
dry_run=""
for a in "$@"; do case "$a" in test=True | test=true | test=1) dry_run=1 ;; esac; done
if [ $rc = 0 ] && [ -z "$dry_run" ]; then
  install -m 0600 "$PILLAR_DIR/run/appliance.sls" "$PILLAR_DIR/appliance.sls.new"
  mv -f "$PILLAR_DIR/appliance.sls.new" "$PILLAR_DIR/appliance.sls"
fi
exit $rc
