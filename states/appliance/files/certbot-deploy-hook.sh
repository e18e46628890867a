#!/bin/sh
# certbot deploy hook of the ISP Mail Appliance (installed by
# states/appliance/certbot.sls; runs on the first issuance and on every renewal).
#
# 1. Copies the lineage's fullchain.pem and privkey.pem to the directory the
#    services read (root:GROUP, key 0640): certbot's own archive is root-only and
#    the services do not run as root.
# 2. Restarts the services under supervisor so they present the new certificate.
#
# Settings come from the environment, then from the file Salt writes
# (/etc/appliance/certbot-hook.env, overridable with APPLIANCE_HOOK_ENV), then
# the defaults below. certbot sets RENEWED_LINEAGE.
set -eu
HOOK_ENV=${APPLIANCE_HOOK_ENV:-/etc/appliance/certbot-hook.env}
# shellcheck disable=SC1090
[ -r "$HOOK_ENV" ] && . "$HOOK_ENV"
: "${APPLIANCE_CONFIG:=/etc/appliance/appliance.toml}"
: "${APPLIANCE_TLS_DIR:=/etc/appliance/tls/certbot}"
: "${APPLIANCE_TLS_GROUP:=appliance}"
: "${APPLIANCE_VENV:=/opt/appliance/venv}"
: "${RENEWED_LINEAGE:?certbot sets RENEWED_LINEAGE (the live/NAME directory)}"

log() { echo "appliance deploy hook: $*" >&2; }

for f in fullchain.pem privkey.pem; do
  [ -s "$RENEWED_LINEAGE/$f" ] || { log "$RENEWED_LINEAGE/$f: missing or empty"; exit 1; }
done
install -d -m 0750 -g "$APPLIANCE_TLS_GROUP" "$APPLIANCE_TLS_DIR"
# Copy both beside their targets first, then rename: each file is replaced atomically.
install -m 0640 -g "$APPLIANCE_TLS_GROUP" "$RENEWED_LINEAGE/privkey.pem" "$APPLIANCE_TLS_DIR/.privkey.pem.new"
install -m 0644 -g "$APPLIANCE_TLS_GROUP" "$RENEWED_LINEAGE/fullchain.pem" "$APPLIANCE_TLS_DIR/.fullchain.pem.new"
mv -f "$APPLIANCE_TLS_DIR/.privkey.pem.new" "$APPLIANCE_TLS_DIR/privkey.pem"
mv -f "$APPLIANCE_TLS_DIR/.fullchain.pem.new" "$APPLIANCE_TLS_DIR/fullchain.pem"
log "installed $RENEWED_LINEAGE certificate in $APPLIANCE_TLS_DIR"

# Where supervisord's control socket is: the config's paths.run_dir.
run_dir=$("$APPLIANCE_VENV/bin/python" -c 'import sys; from appliance.config import load; print(load(sys.argv[1]).paths.run_dir)' "$APPLIANCE_CONFIG") || {
  log "cannot read $APPLIANCE_CONFIG; services not restarted"; exit 1; }
conf="$run_dir/supervisord.conf"
if [ ! -S "$run_dir/supervisor.sock" ] || ! "$APPLIANCE_VENV/bin/supervisorctl" -c "$conf" pid >/dev/null 2>&1; then
  log "supervisord is not running; the services will load the certificate when they start"
  exit 0
fi
"$APPLIANCE_VENV/bin/supervisorctl" -c "$conf" restart all >&2
log "services restarted"
