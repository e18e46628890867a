#!/usr/bin/python3
"""THE catalogue of real peers the tests and the README's commands drive, and a check of each.

`python3 scripts/peercheck.py` runs every probe and prints one line per missing capability,
naming the Debian package that supplies it; exit 1 if any is missing. `--packages` prints the
Debian package list (one per line) that `make deps-debian` installs with --no-install-recommends,
so this file is the only list. Stdlib only: it runs with /usr/bin/python3 before the venv exists.

A probe checks the capability a test uses, not only that a binary exists: swaks without
Net::SSLeay is on PATH but cannot STARTTLS, vagrant without vagrant-libvirt has no libvirt
provider. Every package a Recommends would have pulled in is named here explicitly.

Adding a peer: one `Peer(...)` line. Fields: name (what the failure line calls it), packages
(installed by `make deps-debian`; a missing binary names the first, a missing capability the
last, so put the binary's package first and the one that supplies the capability last), argv (run with a timeout, no shell), expect (a
regular expression the combined stdout+stderr must match), what (the capability, for the
failure line), rc (the exit code the probe must end with; None accepts any).

PEERCHECK_DROP=pkg1,pkg2 leaves packages out of `--packages` (only for the rehearsal's
negative run, which shows that the check then fails naming them).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

TIMEOUT = 60  # seconds per probe; vagrant loads Ruby and every plugin (about 5 s here)


@dataclass(frozen=True)
class Peer:
    name: str
    packages: tuple[str, ...]
    argv: tuple[str, ...]
    expect: str
    what: str
    rc: int | None = 0


def P(name: str, packages: str, argv: str | list[str], expect: str, what: str, rc: int | None = 0) -> Peer:
    """One catalogue line: packages space-separated; argv a string split on spaces, or a list."""
    args = tuple(argv.split()) if isinstance(argv, str) else tuple(argv)
    return Peer(name, tuple(packages.split()), args, expect, what, rc)


# The build/test machinery itself (the README's set-up installs make and python3 first).
PEERS: list[Peer] = [
    P("make", "make", "make --version", r"GNU Make 4", "GNU make"),
    P("python3-venv", "python3-venv", ["/usr/bin/python3", "-c", "import ensurepip, venv"], r"", "venv with ensurepip"),
    P("python3-pip", "python3-pip", "/usr/bin/python3 -m pip --version", r"pip \d+", "pip for Debian's python3"),
    P("python3-dev", "python3-dev", ["/usr/bin/python3", "-c",
      "import os,sysconfig;print(os.path.exists(os.path.join(sysconfig.get_paths()['include'],'Python.h')))"],
      r"True", "Python.h (Salt's timelib wheel compiles)"),
    P("gcc", "gcc libc6-dev", "gcc -print-file-name=crt1.o", r"^/\S+/crt1\.o", "a C compiler with libc headers"),
    P("ca-certificates", "ca-certificates", "test -s /etc/ssl/certs/ca-certificates.crt", r"",
      "the CA bundle (pip inside the states' chroot)"),
    P("openssl", "openssl", "openssl version", r"OpenSSL 3", "openssl CLI (test CAs)"),
    P("git", "git", "git --version", r"git version 2\.", "git (a clone; the rehearsal's git archive)"),
    # SMTP
    P("swaks", "swaks", "swaks --version", r"swaks version", "swaks"),
    # swaks's Recommends, which --no-install-recommends drops: Net::SSLeay (--tls), IO::Socket::INET6 (::1).
    P("swaks", "swaks libnet-ssleay-perl", "swaks --support", r"^=== TLS supported", "STARTTLS support"),
    P("swaks", "swaks", "swaks --support", r"^=== Basic AUTH supported", "AUTH PLAIN/LOGIN support"),
    P("swaks", "swaks libio-socket-inet6-perl", "swaks --support", r"^=== IPv6 supported", "IPv6 support"),
    P("postfix", "postfix", "postconf -h mail_version", r"^3\.", "Postfix 3"),
    P("smtp-source", "postfix", "smtp-source", r"usage: smtp-source", "smtp-source", rc=None),
    P("smtp-sink", "postfix", "smtp-sink", r"usage: smtp-sink", "smtp-sink", rc=None),
    # DNS: the authoritative server of tests/internet (SPF, DKIM, DMARC, ARC and DNSBL test zones)
    P("knot", "knot", "knotd --version", r"Knot DNS\), version 3\.", "Knot DNS authoritative server"),
    P("knotc", "knot", "knotc --version", r"Knot DNS\), version 3\.", "knotc (zone and config checks)"),
    P("keymgr", "knot", "keymgr --version", r"Knot DNS\), version 3\.", "keymgr (DS of the signed test zone)"),
    # DNS: the validating resolver of tests/internet/test_outbound_* (DANE needs the AD bit)
    P("unbound", "unbound", "unbound -V", r"^Version 1\.", "unbound validating resolver"),
    # IMAP / POP
    P("dovecot", "dovecot-core", "dovecot --version", r"^2\.3\.", "Dovecot 2.3"),
    P("dovecot", "dovecot-imapd", "test -x /usr/lib/dovecot/imap", r"", "Dovecot's imap server"),
    P("dovecot", "dovecot-pop3d", "test -x /usr/lib/dovecot/pop3", r"", "Dovecot's pop3 server"),
    P("doveadm", "dovecot-core", "doveadm pw -s SHA512-CRYPT -p x", r"\{SHA512-CRYPT\}", "doveadm pw SHA512-CRYPT"),
    P("curl", "curl", "curl --version", r"Protocols:.*\bimaps?\b.*\bpop3s?\b", "curl with IMAP and POP3"),
    P("fetchmail", "fetchmail", "fetchmail --version", r"fetchmail release 6\.\S*\+SSL", "fetchmail with SSL",
      rc=None),
    P("getmail6", "getmail6", "getmail --version", r"getmail 6\.", "getmail 6"),
    P("mbsync", "isync", "mbsync --version", r"isync 1\.", "isync/mbsync"),
    P("offlineimap", "offlineimap3", "offlineimap --version", r"^8\.", "offlineimap3"),
    P("neomutt", "neomutt", "neomutt -v", r"NeoMutt 20", "neomutt"),
    P("tmux", "tmux", "tmux -V", r"tmux 3", "tmux (drives neomutt)"),
    # ACME
    P("pebble", "pebble", "pebble -h", r"-config", "pebble", rc=None),
    P("pebble-challtestsrv", "pebble", "pebble-challtestsrv -h", r"-dns01", "pebble-challtestsrv", rc=None),
    # The fleet's shared limiter (tests/fleet, docs/fleet.md): Debian 12 ships Redis 7.0 (Lua scripts, EVALSHA)
    P("redis-server", "redis-server", "redis-server --version", r"Redis server v=7\.", "Redis 7 server"),
    P("redis-cli", "redis-tools", "redis-cli --version", r"redis-cli 7\.", "redis-cli"),
    # The fleet's shared accounts (tests/fleet/test_pg_*, docs/fleet.md): PostgreSQL 15, started by the tests
    # with initdb + pg_ctl in a temp dir (the package's own cluster is not used).
    P("postgres", "postgresql-15", "/usr/lib/postgresql/15/bin/postgres --version", r"PostgreSQL\) 15\.",
      "PostgreSQL 15 server (initdb, pg_ctl)"),
    P("psql", "postgresql-client-15", "/usr/lib/postgresql/15/bin/psql --version", r"PostgreSQL\) 15\.",
      "psql 15"),
    P("certbot", "certbot", "certbot --version", r"certbot 2\.", "certbot 2"),
    # The web console's browser tests (tests/console/): Debian's chromium driven by selenium through
    # chromium-driver; fonts so screenshots render text (nothing may download a browser of its own).
    P("chromium", "chromium", "chromium --version", r"Chromium \d+", "Chromium browser"),
    P("chromedriver", "chromium-driver", "chromedriver --version", r"ChromeDriver \d+", "chromium's WebDriver"),
    P("fonts", "fonts-dejavu-core", "test -s /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", r"",
      "a font for screenshots"),
    # Several hosts on one machine
    P("ip", "iproute2", "ip netns list", r"", "ip netns"),
    P("ss", "iproute2", "ss -V", r"iproute2", "ss"),
    P("nft", "nftables", "nft --version", r"nftables v1\.", "nftables"),
    P("nsenter", "util-linux", "nsenter --version", r"util-linux", "nsenter"),
    P("unshare", "util-linux", "unshare --version", r"util-linux", "unshare (a private mount namespace)"),
    # Salt, chroots, images
    P("debootstrap", "debootstrap", "debootstrap --version", r"debootstrap 1\.0", "debootstrap"),
    P("debootstrap", "debian-archive-keyring", "test -s /usr/share/keyrings/debian-archive-keyring.gpg", r"",
      "the Debian archive keyring (debootstrap verifies the mirror)"),
    P("systemd-nspawn", "systemd-container", "systemd-nspawn --version", r"systemd 25\d", "systemd-nspawn"),
    P("sfdisk", "fdisk", "sfdisk --version", r"util-linux", "sfdisk"),
    P("mkfs.ext4", "e2fsprogs", "mkfs.ext4 -V", r"mke2fs 1\.", "mkfs.ext4 -d", rc=None),
    P("debugfs", "e2fsprogs", "debugfs -V", r"debugfs 1\.", "debugfs", rc=None),
    P("grub", "grub-pc-bin", "test -s /usr/lib/grub/i386-pc/boot.img", r"", "GRUB's i386-pc images"),
    P("grub", "grub-common", "grub-mkimage --version", r"GRUB", "grub-mkimage"),
    P("qemu-img", "qemu-utils", "qemu-img --version", r"qemu-img version", "qemu-img"),
    # Boots a diskless PC under TCG; SeaBIOS finds nothing to boot and reboots at once, which -no-reboot
    # turns into an exit: proves TCG, the BIOS, user networking and the virtio-net ROM the image boot uses.
    P("qemu", "qemu-system-x86", ["qemu-system-x86_64", "-accel", "tcg", "-M", "pc", "-m", "64", "-nodefaults",
      "-display", "none", "-monitor", "none", "-serial", "none", "-netdev", "user,id=n0,restrict=on",
      "-device", "virtio-net-pci,netdev=n0", "-boot", "order=c,strict=on,reboot-timeout=0", "-no-reboot"],
      r"", "qemu-system-x86_64 -accel tcg"),
    P("ssh", "openssh-client", "ssh -V", r"OpenSSH_9", "ssh", rc=None),
    P("ssh-keygen", "openssh-client", "ssh-keygen -l -f /dev/null", r"not a public key file", "ssh-keygen -l",
      rc=None),
    # `appliance user move --ssh` (tests/fleet/test_home_move_ssh.py): a private sshd on loopback whose
    # key is restricted by rrsync (shipped with rsync since 3.2.4) to the target box's mail directory.
    P("sshd", "openssh-server", "/usr/sbin/sshd -V", r"OpenSSH_9", "sshd (a private one per test)", rc=None),
    P("rrsync", "rsync", "rrsync -help", r"restricted directory", "rrsync (authorized_keys command=)"),
    # Vagrant (the README's demo; the tests run `vagrant validate` with the libvirt provider)
    P("vagrant", "vagrant", "vagrant --version", r"Vagrant 2\.", "vagrant"),
    P("vagrant", "vagrant-libvirt", "vagrant plugin list", r"vagrant-libvirt", "libvirt provider"),
    P("libvirt", "libvirt-daemon-system", "libvirtd --version", r"libvirtd \(libvirt\) 9\.", "libvirtd"),
    P("libvirt", "libvirt-clients", "virsh --version", r"^9\.", "virsh"),
    P("libvirt", "libvirt-daemon-driver-qemu",
      "test -e /usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_qemu.so", r"",
      "libvirt qemu driver"),
    P("libvirt", "dnsmasq-base", "dnsmasq --version", r"Dnsmasq version 2\.", "dnsmasq for libvirt's default network"),
    # `make vagrant-test` (tests/vagrant/): libvirtd and virtlogd started by hand without systemd,
    # isolated networks (libvirt adds iptables rules even for those), rsync synced folders.
    P("libvirt", "libvirt-daemon", "virtlogd --version", r"virtlogd \(libvirt\) 9\.", "virtlogd"),
    P("libvirt", "iptables", "iptables --version", r"iptables v1\.8", "iptables for libvirt's network rules"),
    P("rsync", "rsync", "rsync --version", r"rsync +version 3\.", "rsync (Vagrant's rsync synced folders)"),
]


def packages(drop: set[str]) -> list[str]:
    """Every package of the catalogue, each once, in catalogue order, minus DROP."""
    seen: dict[str, None] = {}
    for peer in PEERS:
        for pkg in peer.packages:
            seen.setdefault(pkg, None)
    return [p for p in seen if p not in drop]


def probe(peer: Peer) -> str | None:
    """None when the capability is there, else the one-line failure."""
    cmd = " ".join(peer.argv)
    fix = f"-> apt-get install {peer.packages[-1]}"
    # A missing binary is its own package's fault (the first), not the capability's (the last).
    not_found = f"peer {peer.name}: {peer.argv[0]} not found -> apt-get install {peer.packages[0]}"
    env = {**os.environ, "LC_ALL": "C", "VAGRANT_CHECKPOINT_DISABLE": "1"}
    try:
        proc = subprocess.run(peer.argv, capture_output=True, text=True, timeout=TIMEOUT, env=env,
                              stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        return not_found
    except subprocess.TimeoutExpired:
        return f"peer {peer.name}: no {peer.what} ({cmd} did not finish in {TIMEOUT}s) {fix}"
    out = proc.stdout + proc.stderr
    if (peer.rc is not None and proc.returncode != peer.rc) or not re.search(peer.expect, out, re.M):
        return f"peer {peer.name}: no {peer.what} ({cmd}) {fix}"
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--packages", action="store_true", help="print the Debian package list and exit")
    args = ap.parse_args()
    drop = {p for p in os.environ.get("PEERCHECK_DROP", "").replace(",", " ").split() if p}
    if args.packages:
        print("\n".join(packages(drop)))
        return 0
    # In parallel (vagrant and qemu take seconds each); the lines keep the catalogue's order.
    with ThreadPoolExecutor(max_workers=4) as pool:
        # One line per gap: three swaks probes without swaks are one missing package.
        failures = list(dict.fromkeys(line for line in pool.map(probe, PEERS) if line))
    for line in failures:
        print(line, file=sys.stderr)
    if failures:
        print(f"peercheck: {len(failures)} of {len(PEERS)} probes failed; `make deps-debian` as root installs "
              "them all", file=sys.stderr)
        return 1
    print(f"peercheck: all {len(PEERS)} probes passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
