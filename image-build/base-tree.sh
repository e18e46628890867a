#!/bin/bash
# Make (or reuse) the cached Debian 12 minbase tree that the states tests and the
# image build start from. The cache lives outside the checkout so it survives
# between runs: ${APPLIANCE_CACHE:-/var/cache/isp-appliance}/bookworm-minbase.
# Prints the tree's path on stdout; progress goes to stderr.
set -euo pipefail
CACHE=${APPLIANCE_CACHE:-/var/cache/isp-appliance}
TREE=$CACHE/bookworm-minbase
LOCK=$CACHE/.base-tree.lock
mkdir -p "$CACHE"
exec 9>"$LOCK"
flock 9
if [ -f "$TREE/.complete" ]; then
  echo "$TREE"
  exit 0
fi
# The mirror apt already uses on this machine (no other host is reachable).
MIRROR=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
MIRROR=${MIRROR:-$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list 2>/dev/null)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
rm -rf "$TREE.partial"
start=$(date +%s)
echo "base-tree: debootstrap --variant=minbase bookworm from $MIRROR (about a minute)..." >&2
if ! debootstrap --variant=minbase bookworm "$TREE.partial" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1; then
  echo "base-tree: debootstrap failed; last lines of $CACHE/debootstrap.log:" >&2
  tail -20 "$CACHE/debootstrap.log" >&2
  exit 1
fi
touch "$TREE.partial/.complete"
rm -rf "$TREE"
mv "$TREE.partial" "$TREE"
echo "base-tree: done in $(( $(date +%s) - start ))s" >&2
echo "$TREE"
