"""The host side of `vagrant up`: libvirt's daemons, a storage pool and two isolated networks.

Where systemd is not PID 1 (containers, CI), libvirtd and virtlogd are started by hand,
daemonized, and stopped again by their pid; a daemon that was already running is used and
left alone. The networks are defined here, before any machine boots, with no `<forward>`
element: libvirt then routes nothing off the host, so the machines reach only each other
and the host (the network rule). The Vagrantfile names the same networks.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import pytest

URI = "qemu:///system"
POOL = "appliance"
POOL_DIR = Path("/var/lib/libvirt/images/appliance")
# The Vagrantfile's management and demo networks, as the README defines them.
NETWORK_DIR = Path(__file__).resolve().parents[2] / "image-build" / "libvirt"
NETWORKS = ("appliance-mgmt", "appliance-demo")
QEMU_USER = "libvirt-qemu"  # Debian's qemu.conf `user`
DAEMONS = {"virtlogd": Path("/run/virtlogd.pid"), "libvirtd": Path("/run/libvirtd.pid")}


def virsh(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["virsh", "-c", URI, *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"virsh {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc


def kvm_works() -> bool:
    """Whether libvirt's guests can use KVM here: libvirt runs qemu as libvirt-qemu, which must be
    able to open /dev/kvm (group kvm, mode 0660, as udev sets it up). A node that only root can
    open, or that a nested or sandboxed host refuses, means software emulation."""
    if not os.path.exists("/dev/kvm"):
        return False
    # The peer check's diskless PC (scripts/peercheck.py) with KVM, as the user libvirt's qemu runs as,
    # with the host's CPU model as Vagrant's libvirt guests get it (host-model): SeaBIOS finds no disk
    # and exits at once. A sandboxed KVM that cannot set the host CPU's MSRs aborts here.
    proc = subprocess.run(
        ["runuser", "-u", QEMU_USER, "--", "qemu-system-x86_64", "-accel", "kvm", "-cpu", "host", "-M", "pc", "-m", "64",
         "-nodefaults", "-display", "none", "-monitor", "none", "-serial", "none",
         "-boot", "order=c,strict=on,reboot-timeout=0", "-no-reboot"],
        capture_output=True, text=True, timeout=60)
    return proc.returncode == 0


@dataclass
class LibvirtHost:
    pool_dir: Path
    started: dict[str, int] = field(default_factory=dict)  # daemon name -> pid, only those started here

    def start_daemons(self) -> None:
        if virsh("version", check=False, timeout=30).returncode == 0:
            return  # a libvirtd the host already runs (systemd or the tester): used, not touched
        for name, pidfile in DAEMONS.items():
            if shutil.which(name) is None:
                pytest.fail(f"{name} missing: run `make deps-debian` (package libvirt-daemon-system)")
            if pidfile.exists() and _alive(int(pidfile.read_text().strip() or 0)):
                continue
            if Path("/run/systemd/system").is_dir():
                subprocess.run(["systemctl", "start", f"{name}.service"], check=True, timeout=120)
                continue
            subprocess.run([name, "-d"], check=True, timeout=60)  # daemonizes, writes /run/NAME.pid
            pid = _wait_pidfile(pidfile)
            self.started[name] = pid
        deadline = time.monotonic() + 60
        while virsh("version", check=False, timeout=30).returncode != 0:
            if time.monotonic() > deadline:
                raise AssertionError("libvirtd started but virsh cannot connect to qemu:///system")
            time.sleep(0.5)

    def define(self) -> None:
        """The pool and the networks, fresh: leftovers of an earlier run are removed first."""
        self.remove()
        virsh("pool-define-as", POOL, "dir", "--target", str(self.pool_dir))
        virsh("pool-build", POOL)
        virsh("pool-start", POOL)
        for name in NETWORKS:
            virsh("net-define", str(NETWORK_DIR / f"{name}.xml"))
            virsh("net-start", name)

    def forward_elements(self) -> dict[str, list[str]]:
        """Each network's `<forward>` elements as libvirt has it (must be none: isolated)."""
        out: dict[str, list[str]] = {}
        for name in NETWORKS:
            tree = ET.fromstring(virsh("net-dumpxml", name).stdout)
            out[name] = [ET.tostring(f, encoding="unicode") for f in tree.iter("forward")]
        return out

    def remove_domains(self, prefix: str) -> list[str]:
        """Destroy and undefine every domain named PREFIX* (what a failed `vagrant destroy` left)."""
        names = [n for n in virsh("list", "--all", "--name", check=False).stdout.split() if n.startswith(prefix)]
        for n in names:
            virsh("destroy", n, check=False)
            virsh("undefine", n, "--remove-all-storage", "--nvram", check=False)
        return names

    def remove(self) -> None:
        for name in NETWORKS:
            virsh("net-destroy", name, check=False)
            virsh("net-undefine", name, check=False)
        if virsh("pool-info", POOL, check=False).returncode == 0:
            # vol-list prints a two-line header, then "NAME  PATH" per volume.
            for line in virsh("vol-list", POOL, check=False).stdout.splitlines()[2:]:
                if line.split():
                    virsh("vol-delete", line.split()[0], "--pool", POOL, check=False)
            virsh("pool-destroy", POOL, check=False)
            virsh("pool-undefine", POOL, check=False)
        shutil.rmtree(self.pool_dir, ignore_errors=True)

    def stop_daemons(self) -> None:
        # libvirtd first (it talks to virtlogd), each by the pid it wrote when started here.
        for name in ("libvirtd", "virtlogd"):
            pid = self.started.pop(name, None)
            if pid is None:
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + 30
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


def _wait_pidfile(pidfile: Path) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            pid = 0
        if _alive(pid):
            return pid
        time.sleep(0.2)
    raise AssertionError(f"{pidfile} names no running process after the daemon started")
