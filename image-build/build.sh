#!/bin/bash
# `make image`: the Salt states applied to a fresh Debian 12 tree, made bootable,
# shipped as build/appliance.qcow2 and build/appliance.box (libvirt Vagrant box).
#
# Stages (each prints its elapsed time; a failure names the stage and its log):
#   tree      copy the cached debootstrap minbase tree (base-tree.sh) to build/tree
#   states    states/apply.sh TREE build-pillar.sls: install.sh in the chroot (Salt from the
#             cached wheelhouse, the appliance wheel of this checkout, state.apply)
#   slim      purge the compiler install.sh installs (the wheelhouse made it unnecessary)
#   system    kernel, systemd, sshd, dbus, networkd DHCP, hostname, fstab, GRUB files
#   vagrant   the vagrant user (insecure public key, passwordless sudo); not in PROFILE=production
#   firstboot the oneshot unit that makes every per-box secret on first boot
#   scrub     remove every secret and cache the build left behind
#   disk      partitioned raw disk without loop devices or device-mapper
#   qcow2     build/appliance.qcow2 (compressed)
#   box       build/appliance.box (not in PROFILE=production)
#
# PROFILE (`make image PROFILE=...`): vagrant (default) is the demo/test image above;
# production has no vagrant user and no insecure key: SSH accepts only the keys of the
# pillar's appliance:ssh:authorized_keys (states/appliance/ssh.sls), and it is written to
# build/production/ (IMAGE_BUILD_DIR overrides) as appliance.qcow2 only.
# Needs root (chroot, mounts). Nothing here uses loop devices, device-mapper or vfat.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
PROFILE=${PROFILE:-vagrant}
case $PROFILE in
  vagrant) BUILD=${IMAGE_BUILD_DIR:-$REPO/build} ;;
  production) BUILD=${IMAGE_BUILD_DIR:-$REPO/build/production} ;;
  *) echo "image: PROFILE=$PROFILE: must be vagrant or production" >&2; exit 2 ;;
esac
TREE=$BUILD/tree
LOGS=$BUILD/logs
DISK_MB=${IMAGE_DISK_MB:-4096}          # virtual size; metadata.json says 4 (GiB)
# Reads the tree's appliance.toml (secret_paths.py: stdlib only).
PYTHON=/usr/bin/python3
VAGRANT_PUB=${VAGRANT_PUB:-}
HOSTNAME_SHORT=appliance
# The states' own entry point for a tree (issue 7), and the pillar every image starts with.
STATES_APPLY=$REPO/states/apply.sh
PILLAR=${IMAGE_PILLAR:-$HERE/build-pillar.sls}
# Debian packages the image needs beyond minbase and beyond what the states install.
# rsync: Vagrant's rsync synced folders (states/ and the pillars of the Vagrantfile).
SYSTEM_PACKAGES="linux-image-amd64 systemd systemd-sysv systemd-resolved openssh-server dbus sudo
  ca-certificates netbase iproute2 rsync"

T0=$(date +%s)
STAGE=setup
STAGE_T0=$T0
STAGE_LOG=""

log() { printf '[image %4ss] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }

stage() {
  # End the previous stage, start the next one.
  if [ "$STAGE" != setup ]; then
    log "stage $STAGE done in $(( $(date +%s) - STAGE_T0 ))s"
  fi
  STAGE=$1
  STAGE_T0=$(date +%s)
  STAGE_LOG=$LOGS/$1.log
  : >"$STAGE_LOG"
  log "stage $STAGE: $2"
}

OWN_TREE=0   # set once this build holds the lock: never unmount another build's tree
on_exit() {
  local rc=$?
  if [ "$OWN_TREE" = 1 ]; then unmount_tree || true; fi
  if [ $rc -ne 0 ]; then
    echo "image: FAILED in stage '$STAGE' after $(( $(date +%s) - STAGE_T0 ))s (exit $rc)" >&2
    if [ -n "$STAGE_LOG" ] && [ -s "$STAGE_LOG" ]; then
      echo "image: last lines of $STAGE_LOG:" >&2
      tail -25 "$STAGE_LOG" >&2
    fi
  fi
}
trap on_exit EXIT

# Run a command with its output in the stage log only.
quiet() { "$@" >>"$STAGE_LOG" 2>&1; }

# --- the tree's virtual filesystems -------------------------------------------------------
# /dev is a private tmpfs with the few nodes package scripts need, never a bind mount of the
# host's /dev: a stray `rm -rf build/tree` can then never reach the host's device nodes.
mount_tree() {
  mountpoint -q "$TREE/proc" || mount -t proc proc "$TREE/proc"
  mountpoint -q "$TREE/sys" || mount -t sysfs -o ro sysfs "$TREE/sys"
  if ! mountpoint -q "$TREE/dev"; then
    mount -t tmpfs -o mode=755,size=16m tmpfs "$TREE/dev"
    mknod -m 666 "$TREE/dev/null" c 1 3
    mknod -m 666 "$TREE/dev/zero" c 1 5
    mknod -m 666 "$TREE/dev/full" c 1 7
    mknod -m 666 "$TREE/dev/random" c 1 8
    mknod -m 666 "$TREE/dev/urandom" c 1 9
    mknod -m 666 "$TREE/dev/tty" c 5 0
    ln -s /proc/self/fd "$TREE/dev/fd"
    ln -s /proc/self/fd/0 "$TREE/dev/stdin"
    ln -s /proc/self/fd/1 "$TREE/dev/stdout"
    ln -s /proc/self/fd/2 "$TREE/dev/stderr"
    mkdir -p "$TREE/dev/pts" "$TREE/dev/shm"
    mount -t devpts -o newinstance,ptmxmode=0666 devpts "$TREE/dev/pts"
    ln -s pts/ptmx "$TREE/dev/ptmx"
  fi
}

unmount_tree() {
  [ -d "$TREE" ] || return 0
  local m
  # Deepest first.
  for m in $(awk -v t="$TREE" '$5 == t || index($5, t "/") == 1 {print $5}' /proc/self/mountinfo | sort -r); do
    umount "$m" 2>/dev/null || umount -l "$m"
  done
}

in_tree() {
  chroot "$TREE" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@"
}

apt_in_tree() {
  in_tree apt-get -q -y -o APT::Install-Recommends=false -o Dpkg::Options::=--force-confdef \
    -o Dpkg::Options::=--force-confold "$@"
}

need() {
  local missing=()
  for t in "$@"; do command -v "$t" >/dev/null || missing+=("$t"); done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "image: missing host tools: ${missing[*]} (run \`make deps-debian\` as root)" >&2
    exit 1
  fi
}

# --- preflight ------------------------------------------------------------------------------
if [ "$(id -u)" != 0 ]; then
  echo "image: must run as root (chroot and mounts into the tree)" >&2
  exit 1
fi
need debootstrap chroot sfdisk mkfs.ext4 grub-mkimage qemu-img tar truncate "$PYTHON"
if [ ! -f /usr/lib/grub/i386-pc/boot.img ]; then
  echo "image: /usr/lib/grub/i386-pc/boot.img missing (apt-get install grub-pc-bin)" >&2
  exit 1
fi
if [ "$PROFILE" = vagrant ]; then
  if [ -z "$VAGRANT_PUB" ]; then
    VAGRANT_PUB=$(ls /usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub 2>/dev/null | sort -V | tail -1 || true)
  fi
  if [ ! -f "$VAGRANT_PUB" ]; then
    echo "image: Vagrant's insecure public key not found (apt-get install vagrant, or set VAGRANT_PUB)" >&2
    exit 1
  fi
fi
if [ ! -x "$STATES_APPLY" ] || [ ! -f "$REPO/states/top.sls" ]; then
  echo "image: $STATES_APPLY or states/top.sls missing: the image is the Salt states applied to a tree" >&2
  exit 1
fi
if [ ! -f "$PILLAR" ]; then
  echo "image: pillar $PILLAR: no such file" >&2
  exit 1
fi
mkdir -p "$BUILD" "$LOGS"
# Only one build at a time per build directory.
exec 8>"$BUILD/.image.lock"
if ! flock -n 8; then
  echo "image: another build is running in $BUILD (lock $BUILD/.image.lock)" >&2
  exit 1
fi
OWN_TREE=1
rm -f "$LOGS"/*.log

# --- tree -----------------------------------------------------------------------------------
stage tree "copy the cached debootstrap minbase tree"
BASE=$("$HERE/base-tree.sh" 2>>"$STAGE_LOG")
unmount_tree
if awk -v t="$TREE" 'index($5, t) == 1 {found=1} END {exit !found}' /proc/self/mountinfo; then
  echo "image: something is still mounted under $TREE; refusing to delete it" >&2
  exit 1
fi
rm -rf "$TREE" "$BUILD/appliance.raw"
cp -a "$BASE" "$TREE"
rm -f "$TREE/.complete"
# Small image: no manuals, no translations, no docs beyond the copyright files.
cp "$HERE/files/dpkg-nodoc" "$TREE/etc/dpkg/dpkg.cfg.d/01-appliance-nodoc"
find "$TREE/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
rm -rf "$TREE"/usr/share/man/* "$TREE"/usr/share/info/* "$TREE"/usr/share/locale/*/LC_MESSAGES
# The same mirror and suites as the host (security and point-release updates, too).
if [ -f /etc/apt/sources.list.d/debian.sources ]; then
  cp /etc/apt/sources.list.d/debian.sources "$TREE/etc/apt/sources.list.d/debian.sources"
  : >"$TREE/etc/apt/sources.list"
fi

# --- states -------------------------------------------------------------------------------
stage states "states/apply.sh: install.sh in the tree (Salt, the appliance, states) with the build pillar"
# apply.sh mounts, stages the wheel and the wheelhouse (no compiler needed for Salt: the
# wheelhouse is built on the host once), runs install.sh in the chroot and undoes it all.
quiet "$STATES_APPLY" "$TREE" "$PILLAR"
log "  $(grep -a -E '^(Succeeded|Failed):' "$STAGE_LOG" | tr -s ' ' | tr '\n' ' ')"
# The Vagrant Salt provisioner finds salt-call on PATH and skips its online bootstrap.
ln -sf /opt/appliance/salt/bin/salt-call "$TREE/usr/local/bin/salt-call"

# --- slim -----------------------------------------------------------------------------------
stage slim "purge the compiler install.sh brings for Salt (the wheelhouse made it unnecessary)"
mount_tree
# Package scripts must not start daemons in the tree (PEERS.md).
printf '#!/bin/sh\nexit 101\n' >"$TREE/usr/sbin/policy-rc.d"
chmod 755 "$TREE/usr/sbin/policy-rc.d"
cp --remove-destination -L /etc/resolv.conf "$TREE/etc/resolv.conf"
quiet apt_in_tree purge gcc python3-dev
quiet apt_in_tree autoremove --purge

# --- system ---------------------------------------------------------------------------------
stage system "kernel, systemd, sshd, dbus, networkd DHCP, GRUB files"
# shellcheck disable=SC2086
quiet apt_in_tree install $SYSTEM_PACKAGES
echo "$HOSTNAME_SHORT" >"$TREE/etc/hostname"
cat >"$TREE/etc/hosts" <<EOF
127.0.0.1	localhost
127.0.1.1	$HOSTNAME_SHORT
::1	localhost ip6-localhost ip6-loopback
EOF
echo 'LABEL=root / ext4 errors=remount-ro 0 1' >"$TREE/etc/fstab"
install -m 644 "$HERE/files/90-dhcp.network" "$TREE/etc/systemd/network/90-dhcp.network"
install -D -m 644 "$HERE/files/resolved-appliance.conf" "$TREE/etc/systemd/resolved.conf.d/appliance.conf"
quiet in_tree systemctl enable systemd-networkd.service systemd-resolved.service ssh.service
ln -sf ../run/systemd/resolve/stub-resolv.conf "$TREE/etc/resolv.conf.image"
# GRUB: the i386-pc modules in /boot/grub, a config that boots the kernel from LABEL=root.
rm -rf "$TREE/boot/grub"
mkdir -p "$TREE/boot/grub"
cp -a /usr/lib/grub/i386-pc "$TREE/boot/grub/i386-pc"
install -m 644 "$HERE/files/grub.cfg" "$TREE/boot/grub/grub.cfg"
test -e "$TREE/vmlinuz" && test -e "$TREE/initrd.img" || {
  echo "image: the kernel package left no /vmlinuz or /initrd.img in the tree" >>"$STAGE_LOG"
  exit 1
}

# --- vagrant --------------------------------------------------------------------------------
if [ "$PROFILE" = vagrant ]; then
  stage vagrant "vagrant user with the insecure public key and passwordless sudo"
  in_tree id vagrant >/dev/null 2>&1 || quiet in_tree useradd --create-home --shell /bin/bash vagrant
  install -d -m 700 -o 0 -g 0 "$TREE/home/vagrant/.ssh"
  install -m 600 "$VAGRANT_PUB" "$TREE/home/vagrant/.ssh/authorized_keys"
  in_tree chown -R vagrant:vagrant /home/vagrant/.ssh
  echo 'vagrant ALL=(ALL) NOPASSWD:ALL' >"$TREE/etc/sudoers.d/vagrant"
  chmod 440 "$TREE/etc/sudoers.d/vagrant"
  quiet in_tree visudo -c
else
  stage access "production: no vagrant user; SSH only with the pillar's keys (states/appliance/ssh.sls)"
  if in_tree id vagrant >/dev/null 2>&1 || [ -e "$TREE/home/vagrant" ] || [ -e "$TREE/etc/sudoers.d/vagrant" ]; then
    echo "image: PROFILE=production but the tree has a vagrant user" >>"$STAGE_LOG"
    exit 1
  fi
  quiet in_tree visudo -c
  if ! ls "$TREE"/home/*/.ssh/authorized_keys >/dev/null 2>&1; then
    log "  no appliance:ssh:authorized_keys in $PILLAR: the box has no SSH login (console only)"
  fi
fi

# --- firstboot ------------------------------------------------------------------------------
stage firstboot "oneshot unit that makes the per-box secrets on first boot"
install -m 755 "$HERE/files/appliance-firstboot" "$TREE/usr/local/sbin/appliance-firstboot"
install -m 644 "$HERE/files/appliance-firstboot.service" "$TREE/etc/systemd/system/appliance-firstboot.service"
quiet in_tree systemctl enable appliance-firstboot.service

# --- scrub ----------------------------------------------------------------------------------
stage scrub "remove every secret and cache from the tree"
quiet in_tree apt-get clean
unmount_tree
# Per-box secrets: made again by appliance-firstboot on each box's first boot.
rm -f "$TREE"/etc/ssh/ssh_host_*
: >"$TREE/etc/machine-id"                        # empty: systemd makes one at first boot
rm -f "$TREE/var/lib/systemd/random-seed" "$TREE/var/lib/dbus/machine-id"
ln -s /etc/machine-id "$TREE/var/lib/dbus/machine-id"
"$PYTHON" "$HERE/secret_paths.py" "$TREE" | while read -r p; do
  rm -f "$TREE$p"
  echo "removed $p" >>"$STAGE_LOG"
done
rm -f "$TREE/etc/appliance/.firstboot-done" "$TREE/etc/appliance/enrollment.json"
# Salt's minion key pair (salt-call makes one even masterless) and its cache and log.
rm -rf "$TREE/opt/appliance/salt/etc/pki" "$TREE/var/cache/appliance-salt" "$TREE/var/log/appliance-salt.log"
# Build-only things.
rm -rf "$TREE/var/cache/appliance-build" "$TREE/srv/appliance/pillar" "$TREE/usr/sbin/policy-rc.d"
rm -rf "$TREE"/var/lib/apt/lists/* "$TREE"/var/cache/apt/*.bin "$TREE"/root/.cache "$TREE"/tmp/* "$TREE"/var/tmp/*
find "$TREE/var/log" -type f -exec truncate -s 0 {} +
mv "$TREE/etc/resolv.conf.image" "$TREE/etc/resolv.conf"
log "  tree is $(du -sh --exclude=proc --exclude=sys --exclude=dev "$TREE" | cut -f1)"

# --- disk -----------------------------------------------------------------------------------
stage disk "raw disk: MBR, ext4 from the tree at 1 MiB, GRUB boot.img + core.img (no loop devices)"
RAW=$BUILD/appliance.raw
rm -f "$RAW"
truncate -s "${DISK_MB}M" "$RAW"
printf 'label: dos\nstart=2048, type=83, bootable\n' | quiet sfdisk "$RAW"
quiet mkfs.ext4 -q -F -L root -d "$TREE" -E offset=1048576 "$RAW" "$(( DISK_MB - 1 ))M"
quiet grub-mkimage -O i386-pc -o "$BUILD/core.img" -p '(hd0,msdos1)/boot/grub' biosdisk part_msdos ext2
quiet dd if=/usr/lib/grub/i386-pc/boot.img of="$RAW" bs=440 count=1 conv=notrunc
quiet dd if="$BUILD/core.img" of="$RAW" bs=512 seek=1 conv=notrunc
rm -f "$BUILD/core.img"

# --- qcow2 ----------------------------------------------------------------------------------
stage qcow2 "build/appliance.qcow2 (compressed)"
rm -f "$BUILD/appliance.qcow2.tmp"
quiet qemu-img convert -c -O qcow2 "$RAW" "$BUILD/appliance.qcow2.tmp"
mv "$BUILD/appliance.qcow2.tmp" "$BUILD/appliance.qcow2"
rm -f "$RAW"

# --- box ------------------------------------------------------------------------------------
if [ "$PROFILE" = vagrant ]; then
stage box "build/appliance.box (libvirt Vagrant box)"
BOXDIR=$BUILD/box
rm -rf "$BOXDIR"
mkdir -p "$BOXDIR"
printf '{"provider":"libvirt","format":"qcow2","virtual_size":%d}\n' $(( DISK_MB / 1024 )) >"$BOXDIR/metadata.json"
install -m 644 "$HERE/files/box-Vagrantfile" "$BOXDIR/Vagrantfile"
ln "$BUILD/appliance.qcow2" "$BOXDIR/box.img" 2>/dev/null || cp "$BUILD/appliance.qcow2" "$BOXDIR/box.img"
tar -C "$BOXDIR" -cf "$BUILD/appliance.box.tmp" metadata.json Vagrantfile box.img
mv "$BUILD/appliance.box.tmp" "$BUILD/appliance.box"
rm -rf "$BOXDIR"
fi

stage done "summary"
size_q=$(stat -c %s "$BUILD/appliance.qcow2")
size_b=$(stat -c %s "$BUILD/appliance.box" 2>/dev/null || echo 0)
total=$(( $(date +%s) - T0 ))
cat >"$BUILD/image-stats.json" <<EOF
{"profile": "$PROFILE", "build_seconds": $total, "qcow2_bytes": $size_q, "box_bytes": $size_b, "virtual_size_gib": $(( DISK_MB / 1024 ))}
EOF
if [ "$PROFILE" = vagrant ]; then
  log "built $BUILD/appliance.qcow2 ($(( size_q / 1048576 )) MiB) and $BUILD/appliance.box ($(( size_b / 1048576 )) MiB) in ${total}s"
else
  log "built $BUILD/appliance.qcow2 ($(( size_q / 1048576 )) MiB) in ${total}s (profile production: no Vagrant box)"
fi
STAGE_LOG=""
