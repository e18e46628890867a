#!/bin/bash
# Apply the appliance states into a Debian 12 tree (a chroot), the way
# install.sh does on a real host. The entry point of the image build and of the
# states tests:
#
#   sudo states/apply.sh TREE PILLAR [salt-call arguments...]
#
# e.g. `states/apply.sh /tmp/tree states/pillar.example --out=json test=True`.
# Exit status is salt-call's (--retcode-passthrough): 0 when every state passed.
#
# What it does around install.sh:
# - mounts proc, sys, dev, dev/pts in TREE and a policy-rc.d that refuses to
#   start anything (apt's postinst scripts must not start services in a chroot);
# - copies the host's resolv.conf (restored afterwards) and CA bundle (for pip);
# - builds the appliance wheel on the host (states/build-wheel.sh) unless
#   APPLIANCE_WHEEL names one, and offers pip the cached wheelhouse
#   (states/wheelhouse.sh, or APPLIANCE_WHEELHOUSE) and no other index;
# - runs TREE's copy of install.sh in the chroot with a clean environment;
# - undoes all of the above, whatever happens.
# Nothing is left running: the states only enable units in a chroot.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")

die() { echo "apply.sh: $*" >&2; exit 1; }
[ $# -ge 2 ] || die "usage: $0 TREE PILLAR [salt-call arguments...]"
TREE=$(realpath "$1")
PILLAR=$2
shift 2
[ "$(id -u)" = 0 ] || die "must run as root (chroot, mounts)"
[ -f "$TREE/etc/debian_version" ] || die "$TREE: not a Debian tree (make one with image-build/base-tree.sh, then cp -a it)"
[ -f "$PILLAR" ] || die "$PILLAR: no such pillar file"
[ "$TREE" != / ] || die "TREE is /: use install.sh on a real host"

WH=${APPLIANCE_WHEELHOUSE:-$("$HERE/wheelhouse.sh")}
STAGE=/run/appliance-install            # inside TREE; the booted box mounts a tmpfs over /run
S=$TREE$STAGE
mounted=()
created_policy=""
resolv_backup=""

cleanup() {
  local rc=$?
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
    umount "${mounted[$i]}" 2>/dev/null || umount -l "${mounted[$i]}" || echo "apply.sh: could not unmount ${mounted[$i]}" >&2
  done
  [ -n "$created_policy" ] && rm -f "$TREE/usr/sbin/policy-rc.d"
  if [ -n "$resolv_backup" ]; then
    if [ "$resolv_backup" = none ]; then rm -f "$TREE/etc/resolv.conf"; else mv -f "$resolv_backup" "$TREE/etc/resolv.conf"; fi
  fi
  rm -rf "$S" "$TREE/run/appliance-salt"
  exit $rc
}
trap cleanup EXIT INT TERM

mkdir -p "$S/dist" "$S/wheels"
if [ -n "${APPLIANCE_WHEEL:-}" ]; then
  cp "$APPLIANCE_WHEEL" "$S/dist/"
else
  "$HERE/build-wheel.sh" "$S/dist" >/dev/null
fi
cp -a "$REPO/install.sh" "$REPO/constraints.txt" "$REPO/states" "$S/"
install -m 0600 "$PILLAR" "$S/pillar.sls"
cp /etc/ssl/certs/ca-certificates.crt "$S/ca.pem"

for m in proc sys dev dev/pts; do mkdir -p "$TREE/$m"; done
mount -t proc proc "$TREE/proc" && mounted+=("$TREE/proc")
mount -t sysfs sysfs "$TREE/sys" && mounted+=("$TREE/sys")
mount --bind /dev "$TREE/dev" && mounted+=("$TREE/dev")
mount --bind /dev/pts "$TREE/dev/pts" && mounted+=("$TREE/dev/pts")
mount --bind -o ro "$WH" "$S/wheels" && mounted+=("$S/wheels")

if [ ! -e "$TREE/usr/sbin/policy-rc.d" ]; then
  printf '#!/bin/sh\n# apply.sh: nothing starts in a chroot.\nexit 101\n' >"$TREE/usr/sbin/policy-rc.d"
  chmod 0755 "$TREE/usr/sbin/policy-rc.d"
  created_policy=1
fi
if [ -e "$TREE/etc/resolv.conf" ] || [ -L "$TREE/etc/resolv.conf" ]; then
  resolv_backup=$TREE/etc/.resolv.conf.apply-sh
  mv -f "$TREE/etc/resolv.conf" "$resolv_backup"
else
  resolv_backup=none
fi
cp -L /etc/resolv.conf "$TREE/etc/resolv.conf"

set +e
chroot "$TREE" /usr/bin/env -i \
  PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
  PIP_CERT=$STAGE/ca.pem PIP_FIND_LINKS=$STAGE/wheels PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
  APPLIANCE_WHEEL="$STAGE/dist/$(basename "$(ls "$S"/dist/*.whl)")" \
  /bin/bash "$STAGE/install.sh" "$STAGE/pillar.sls" "$@"
rc=$?
set -e
exit $rc
