#!/bin/bash
# `make rehearse`: a new user's fresh Debian 12 machine, without a new machine.
#
#   minbase   a pristine `debootstrap --variant=minbase bookworm` tree, from a cache tarball that
#             holds nothing but that (checked: its marker names the exact debootstrap command, the
#             tarball's sha256 and the package set, and the unpacked tree must match all three)
#   source    `git archive HEAD` of this checkout into /root/appliance (REHEARSE_SOURCE=worktree:
#             the tracked and untracked, not ignored, files of the work tree instead)
#   bootstrap the README's set-up line (apt-get install git make python3), read from README.md
#   deps      `make deps-debian`: every Debian peer of scripts/peercheck.py (the Debian mirror)
#   venv      `make install`: the venv with the pinned Python dependencies (PyPI)
#   peers     `make doctor-peers`: every peer's capability, one line per gap naming its package
#
# Each stage prints its time; the end prints what apt and pip downloaded. Logs: build/rehearse/.
# PEERCHECK_DROP=pkg[,pkg] leaves packages out of the list inside the tree: the peer check then
# fails naming them (the negative run in docs/testing.md). Root (chroot, mounts).
# Network: the tree shares the host's network but runs only apt (the Debian mirror of
# /etc/apt/sources.list.d/debian.sources) and pip (PyPI); nothing is started in it
# (policy-rc.d refuses every service start). REHEARSE_KEEP=1 leaves the tree (unmounted) to look at.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
CACHE=${APPLIANCE_CACHE:-/var/cache/isp-appliance}
TARBALL=$CACHE/rehearse-minbase.tar.gz
MARKER=$TARBALL.marker
LOGS=${REHEARSE_LOGS:-$REPO/build/rehearse}
SOURCE=${REHEARSE_SOURCE:-HEAD}
DROP=${PEERCHECK_DROP:-}

[ "$(id -u)" = 0 ] || { echo "rehearse: needs root (debootstrap, chroot, mounts)" >&2; exit 1; }

# The mirror apt already uses on this machine (no other host is reachable).
SOURCES=/etc/apt/sources.list.d/debian.sources
MIRROR=$(sed -n 's/^URIs: *//p' "$SOURCES" 2>/dev/null | head -1)
MIRROR=${MIRROR:-$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list 2>/dev/null)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
DEBOOTSTRAP_CMD="debootstrap --variant=minbase bookworm TREE $MIRROR"

T0=$(date +%s)
STAGE=""
STAGE_T0=$T0
declare -a TIMES=()
log() { printf '[rehearse %4ss] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }
stage() {
  if [ -n "$STAGE" ]; then
    TIMES+=("$STAGE $(( $(date +%s) - STAGE_T0 ))s")
    log "stage $STAGE done in $(( $(date +%s) - STAGE_T0 ))s"
  fi
  STAGE=$1
  STAGE_T0=$(date +%s)
  [ -n "$STAGE" ] && log "stage $STAGE: $2"
  return 0
}

mkdir -p "$CACHE" "$LOGS"
rm -f "$LOGS"/*.log
TREE=$(mktemp -d /var/tmp/isp-rehearse.XXXXXX)

unmount_tree() {
  local m
  # Deepest first; lazy as a last resort so a busy mount never leaves the tree half-mounted.
  for m in $(awk -v t="$TREE" '$2 == t || index($2, t "/") == 1 {print $2}' /proc/mounts | sort -r); do
    umount "$m" 2>/dev/null || umount -l "$m"
  done
}

kill_tree_processes() {
  # Anything a package's maintainer script left running inside the tree (policy-rc.d should make this empty).
  local p root
  for p in /proc/[0-9]*; do
    root=$(readlink "$p/root" 2>/dev/null) || continue
    if [ "$root" = "$TREE" ] || [[ "$root" == "$TREE/"* ]]; then
      log "killing ${p#/proc/} left running in the tree: $(tr '\0' ' ' <"$p/cmdline" 2>/dev/null)"
      kill -9 "${p#/proc/}" 2>/dev/null || true
    fi
  done
}

on_exit() {
  local rc=$?
  set +e
  kill_tree_processes
  unmount_tree
  if awk -v t="$TREE" 'index($2, t) == 1 {found=1} END {exit !found}' /proc/mounts; then
    echo "rehearse: $TREE still has mounts; not removing it" >&2
  elif [ -n "${REHEARSE_KEEP:-}" ]; then
    echo "rehearse: REHEARSE_KEEP: the tree stays in $TREE (unmounted)" >&2
  else
    rm -rf --one-file-system "$TREE"
  fi
  if [ $rc -ne 0 ] && [ -n "$STAGE" ]; then
    echo "rehearse: FAILED in stage $STAGE after $(( $(date +%s) - T0 ))s; log: $LOGS/$STAGE.log" >&2
  fi
  exit $rc
}
trap on_exit EXIT
trap 'exit 130' INT TERM

# Runs "$@" in the tree with a clean environment (nothing of the host's pip or apt settings).
in_tree() {
  chroot "$TREE" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root LANG=C.UTF-8 TERM=dumb DEBIAN_FRONTEND=noninteractive PEERCHECK_DROP="$DROP" "$@"
}

package_set() { chroot "$1" dpkg-query -W -f='${db:Status-Abbrev} ${Package}\n' | awk '$1 == "ii" {print $2}' | sort; }

# --- minbase ------------------------------------------------------------------------------------
stage minbase "pristine Debian 12 minbase tree ($DEBOOTSTRAP_CMD)"
cache_ok() {
  [ -s "$TARBALL" ] && [ -s "$MARKER" ] || return 1
  [ "$(sed -n 's/^command: //p' "$MARKER")" = "$DEBOOTSTRAP_CMD" ] || { log "cache: other debootstrap command"; return 1; }
  [ "$(sed -n 's/^sha256: //p' "$MARKER")" = "$(sha256sum "$TARBALL" | cut -d' ' -f1)" ] \
    || { log "cache: tarball changed since debootstrap made it"; return 1; }
}
(
  flock 9
  if ! cache_ok; then
    log "no valid minbase cache: running debootstrap (about a minute)"
    work=$(mktemp -d /var/tmp/isp-minbase.XXXXXX)
    if ! debootstrap --variant=minbase bookworm "$work" "$MIRROR" >"$LOGS/minbase.log" 2>&1; then
      tail -20 "$LOGS/minbase.log" >&2; rm -rf --one-file-system "$work"; exit 1
    fi
    rm -rf "$work"/var/cache/apt/archives/*.deb
    pkgs=$(package_set "$work" | tr '\n' ' ')
    tar -C "$work" --numeric-owner -czf "$TARBALL.partial" .
    rm -rf --one-file-system "$work"
    mv "$TARBALL.partial" "$TARBALL"
    { echo "command: $DEBOOTSTRAP_CMD"; echo "sha256: $(sha256sum "$TARBALL" | cut -d' ' -f1)"
      echo "packages: $pkgs"; echo "made: $(date -u +%FT%TZ)"; } >"$MARKER"
  fi
) 9>"$CACHE/.rehearse-minbase.lock"
tar -C "$TREE" --numeric-owner -xzf "$TARBALL"
want=$(sed -n 's/^packages: //p' "$MARKER" | tr ' ' '\n' | sed '/^$/d')
have=$(package_set "$TREE")
if [ "$want" != "$have" ]; then
  echo "rehearse: the cached tree's packages are not the minbase set debootstrap installed:" >&2
  diff <(echo "$want") <(echo "$have") >&2 || true
  exit 1
fi
# Independently of the marker: minbase is the Priority: required packages plus apt, and what they
# depend on. Anything installed outside that closure would be a leak into the "pristine" tree.
extra=$(/usr/bin/python3 - "$TREE/var/lib/dpkg/status" <<'PY'
import re, sys
pkgs = {}
for block in open(sys.argv[1]).read().split("\n\n"):
    f = dict(re.findall(r"^([\w-]+): (.*)$", block, re.M))
    if f.get("Status", "").endswith(" installed"):
        pkgs[f["Package"]] = f
def deps(f):
    for field in ("Pre-Depends", "Depends"):
        for alt in filter(None, (a.strip() for a in f.get(field, "").split(","))):
            names = [re.split(r"[ :(]", x.strip())[0] for x in alt.split("|")]
            yield next((n for n in names if n in pkgs), names[0])
todo = [n for n, f in pkgs.items() if f.get("Priority") == "required" or n == "apt"]
seen = set()
while todo:
    n = todo.pop()
    if n in seen or n not in pkgs:
        continue
    seen.add(n)
    todo.extend(deps(pkgs[n]))
print(" ".join(sorted(set(pkgs) - seen)))
PY
)
[ -z "$extra" ] || { echo "rehearse: the cached tree holds packages outside minbase: $extra" >&2; exit 1; }
log "minbase tree: $(echo "$have" | wc -l) packages (cache $TARBALL, $(du -sh "$TARBALL" | cut -f1))"

# --- source -------------------------------------------------------------------------------------
stage source "this checkout ($SOURCE) into /root/appliance"
mkdir -p "$TREE/root/appliance"
if [ "$SOURCE" = worktree ]; then
  git -C "$REPO" ls-files -z --cached --others --exclude-standard \
    | (cd "$REPO" && tar --null -T - --ignore-failed-read -cf - 2>/dev/null) | tar -C "$TREE/root/appliance" -xf -
else
  git -C "$REPO" archive "$SOURCE" | tar -C "$TREE/root/appliance" -xf -
fi
log "$(find "$TREE/root/appliance" -type f | wc -l) files"

# The machine's name service and its local CAs (an egress proxy's; ca-certificates, which the
# set-up installs, adds them to the bundle pip uses), and no service may start in the tree (it
# shares the host's network).
cp -L /etc/resolv.conf "$TREE/etc/resolv.conf"
if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
  mkdir -p "$TREE/usr/local/share/ca-certificates"
  cp /usr/local/share/ca-certificates/*.crt "$TREE/usr/local/share/ca-certificates/"
fi
printf '#!/bin/sh\nexit 101\n' >"$TREE/usr/sbin/policy-rc.d"
chmod 0755 "$TREE/usr/sbin/policy-rc.d"
# A fresh Debian 12 machine's apt sources (bookworm, -updates, -security) from this machine's mirror.
if [ -s "$SOURCES" ]; then
  rm -f "$TREE/etc/apt/sources.list"
  cp "$SOURCES" "$TREE/etc/apt/sources.list.d/debian.sources"
fi
mount -t proc proc "$TREE/proc"
mount -t sysfs sys "$TREE/sys"
mount --bind /dev "$TREE/dev"
mount --bind /dev/pts "$TREE/dev/pts"

# --- bootstrap ----------------------------------------------------------------------------------
# The README's own set-up line, so the README and the rehearsal cannot drift apart.
BOOTSTRAP=$(sed -n 's/^\(sudo \)\{0,1\}\(apt-get update && apt-get install [^#]*\).*/\2/p' "$REPO/README.md" | head -1)
[ -n "$BOOTSTRAP" ] || { echo "rehearse: README.md has no 'apt-get update && apt-get install ...' set-up line" >&2; exit 1; }
stage bootstrap "README set-up: $BOOTSTRAP"
in_tree /bin/sh -c "$BOOTSTRAP" >"$LOGS/bootstrap.log" 2>&1 || { tail -20 "$LOGS/bootstrap.log" >&2; exit 1; }

# --- deps, venv: `make deps-debian install`, one stage per target to time apt and pip apart -----
stage deps "make deps-debian${DROP:+ (PEERCHECK_DROP=$DROP)}"
in_tree /bin/sh -c 'cd /root/appliance && make deps-debian' >"$LOGS/deps.log" 2>&1 \
  || { tail -30 "$LOGS/deps.log" >&2; exit 1; }
stage venv "make install (the venv, from PyPI)"
in_tree /bin/sh -c 'cd /root/appliance && make install' >"$LOGS/venv.log" 2>&1 \
  || { tail -30 "$LOGS/venv.log" >&2; exit 1; }

# --- peers --------------------------------------------------------------------------------------
stage peers "make doctor-peers inside the tree"
set +e
in_tree /bin/sh -c 'cd /root/appliance && make -s doctor-peers' >"$LOGS/peers.log" 2>&1
peers_rc=$?
set -e
cat "$LOGS/peers.log"
stage "" ""

# --- summary ------------------------------------------------------------------------------------
apt_mb=$(cat "$LOGS"/*.log | awk '/^Need to get/ {
  split($4, a, "/"); v = a[1]; u = $5; gsub(/,/, "", v)
  if (u == "kB") v /= 1000; else if (u == "GB") v *= 1000; else if (u == "B") v /= 1000000
  s += v } END {printf "%.0f", s}')
# pip keeps no cache of what `make install` fetched here, so the size is that of the same
# requirements downloaded once more (not part of the stage times).
in_tree /bin/sh -c 'cd /root/appliance && .venv/bin/pip download -q -d /tmp/pip-measure -c constraints.txt ".[test]"' \
  >"$LOGS/measure.log" 2>&1 || true
pip_mb=$( (du -sm "$TREE/tmp/pip-measure" 2>/dev/null || echo "?") | cut -f1)
tree_mb=$(du -sm --one-file-system "$TREE" | cut -f1)
{ echo "rehearse: stages: ${TIMES[*]}; total $(( $(date +%s) - T0 ))s"
  echo "rehearse: downloaded: apt ${apt_mb} MB (\"Need to get\"), pip ${pip_mb} MB (PyPI); tree ${tree_mb} MB"
} | tee "$LOGS/summary.txt"
if [ $peers_rc -ne 0 ]; then
  echo "rehearse: FAILED: the peer check inside the fresh tree found gaps (above)" >&2
  STAGE=""
  exit 1
fi
echo "rehearse: OK: a fresh Debian 12 minbase tree passes the peer check after the README's set-up"
