#!/bin/bash
# `make up`: a loopback development box in the foreground until Ctrl-C.
set -euo pipefail
DIR=${1:-var/dev}
APP=.venv/bin/appliance
CFG="$DIR/appliance.toml"
if [ ! -f "$CFG" ]; then
  echo "== initialising a development box in $DIR"
  $APP init --dev "$DIR" --domain example.test
fi
DOMAIN=$(.venv/bin/python -c "import sys; from appliance.config import load; print(load(sys.argv[1]).box.domains[0])" "$CFG")
if ! $APP -c "$CFG" user list | grep -q "^demo@$DOMAIN "; then
  echo "== creating the demo user (the password is shown only now)"
  $APP -c "$CFG" user add "demo@$DOMAIN" --generate
  echo "   login: demo@$DOMAIN"
fi
if ! $APP -c "$CFG" user list | grep -q "^admin@$DOMAIN "; then
  echo "== creating the console's admin (the password is shown only now)"
  $APP -c "$CFG" user add "admin@$DOMAIN" --admin --generate
fi
CONSOLE=$(.venv/bin/python -c "import sys; from appliance.config import load; l = load(sys.argv[1]).listeners.console; print(f'https://{l.host}:{l.port}/' if l.enabled else 'disabled (listeners.console)')" "$CFG")
echo "== web console: $CONSOLE  admin login: admin@$DOMAIN (docs/console.md)"
$APP -c "$CFG" down >/dev/null 2>&1 || true
echo "== starting (Ctrl-C stops everything)"
exec $APP -c "$CFG" up --foreground
