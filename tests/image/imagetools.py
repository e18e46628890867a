"""Build the image once, look inside it without mounting it, boot it under qemu (TCG).

Nothing here mounts or loop-attaches the disk: files are read with debugfs at the
partition's offset, as the build wrote them. qemu forwards guest ports to 127.0.0.1 only,
on ports the OS picked, and runs with -snapshot so the image is never modified.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from appliance.devbox import free_port

REPO = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("IMAGE_BUILD_DIR", REPO / "build"))
PART_OFFSET = 1048576  # the root partition starts at sector 2048 (image-build/build.sh)
BUILD_TIMEOUT = 20 * 60
BOOT_TIMEOUT = 6 * 60  # first boot under software emulation, key generation included

# What the image is made from: a change to any of these rebuilds it.
INPUTS = ("image-build", "states", "install.sh", "appliance", "services", "pyproject.toml", "constraints.txt")


def inputs_digest() -> str:
    h = hashlib.sha256()
    for top in INPUTS:
        p = REPO / top
        files = [p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file() and "__pycache__" not in x.parts)
        for f in files:
            h.update(str(f.relative_to(REPO)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def build_image() -> dict[str, object]:
    """Run image-build/build.sh unless build/ already holds an image of these inputs; a raw copy to inspect."""
    reused = ensure_image()
    qcow2 = BUILD / "appliance.qcow2"
    raw = BUILD / "test" / "appliance.raw"
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.unlink(missing_ok=True)
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(qcow2), str(raw)], check=True, timeout=600)
    return {"raw": raw, "reused": reused}


def ensure_image(build: Path = BUILD, profile: str = "vagrant", pillar: Path | None = None) -> bool:
    """Build the image of PROFILE into BUILD unless it holds one of these inputs already; True if reused.

    One build per `make test`: tests/image and tests/vagrant both call this, and the stamp
    (the inputs' digest) makes the second call a no-op.
    """
    digest = inputs_digest() + f" {profile} " + (hashlib.sha256(pillar.read_bytes()).hexdigest() if pillar else "")
    stamp = build / ".image-inputs"
    qcow2, box = build / "appliance.qcow2", build / "appliance.box"
    outputs = [qcow2, box] if profile == "vagrant" else [qcow2]
    reused = all(o.exists() for o in outputs) and stamp.exists() and stamp.read_text().strip() == digest
    if os.environ.get("IMAGE_TEST_REUSE") == "1" and all(o.exists() for o in outputs):
        reused = True  # iterating on the tests themselves: take build/ as it is
    if not reused:
        stamp.unlink(missing_ok=True)
        env = {**os.environ, "IMAGE_BUILD_DIR": str(build), "PROFILE": profile}
        if pillar:
            env["IMAGE_PILLAR"] = str(pillar)
        proc = subprocess.run(["bash", str(REPO / "image-build/build.sh")], capture_output=True, text=True,
                              timeout=BUILD_TIMEOUT, env=env)
        if proc.returncode != 0:
            pytest.fail(f"make image PROFILE={profile} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        stamp.write_text(digest + "\n")
    return reused


@dataclass
class ImageFiles:
    """Read-only view of the root filesystem inside a raw disk image (debugfs)."""

    raw: Path
    scratch: Path

    def _debugfs(self, request: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(["debugfs", "-R", request, f"{self.raw}?offset={PART_OFFSET}"],
                              capture_output=True, timeout=300)

    def exists(self, path: str) -> bool:
        proc = self._debugfs(f"stat {path}")
        return b"File not found" not in proc.stderr and b"Inode:" in proc.stdout

    def read(self, path: str) -> bytes:
        proc = self._debugfs(f"cat {path}")
        assert b"File not found" not in proc.stderr, f"{path} not in the image"
        return proc.stdout

    def listing(self, path: str) -> list[str]:
        proc = self._debugfs(f"ls -p {path}")
        # -p: /inode/mode/uid/gid/name/size/ per entry
        names = [line.split("/")[5] for line in proc.stdout.decode().splitlines() if line.count("/") >= 6]
        return [n for n in names if n not in (".", "..")]

    def private_keys(self, roots: list[str]) -> list[str]:
        """Files under ROOTS (in the image) that hold a PEM or OpenSSH private key."""
        found: list[str] = []
        for root in roots:
            out = self.scratch / root.strip("/").replace("/", "_")
            out.mkdir(parents=True, exist_ok=True)
            self._debugfs(f"rdump {root} {out}")
            for f in out.rglob("*"):
                if f.is_file() and not f.is_symlink() and b"PRIVATE KEY-----" in f.read_bytes():
                    found.append(f"{root}/{f.relative_to(out)}")
        return found


def image_paths(raw: Path, scratch: Path) -> ImageFiles:
    return ImageFiles(raw, scratch)


def vagrant_private_key() -> Path:
    keys = sorted(glob.glob("/usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant"))
    if not keys:
        pytest.fail("Vagrant's insecure private key not found: run `make deps-debian` (package vagrant)")
    return Path(keys[-1])


GUEST_PORTS = {"ssh": 22, "smtp": 25, "submission": 587, "imap": 143}
EXPECT = {"ssh": b"SSH-2.0-", "smtp": b"220 ", "submission": b"220 ", "imap": b"* OK"}


@dataclass
class BootedImage:
    proc: subprocess.Popen[bytes]
    dir: Path
    ports: dict[str, int]
    started: float
    key: Path
    banner_seconds: float = 0.0
    banner_service: str = ""
    greetings: dict[str, bytes] = field(default_factory=dict)

    @property
    def serial_log(self) -> Path:
        return self.dir / "serial.log"

    def _try_greeting(self, name: str) -> bytes:
        # qemu's user network accepts the connection even when nothing listens in the
        # guest, then closes it: only a real first line counts.
        try:
            with socket.create_connection(("127.0.0.1", self.ports[name]), timeout=5) as s:
                s.settimeout(10)
                data = s.recv(512)
        except OSError:
            return b""
        return data if data.startswith(EXPECT[name]) else b""

    def wait_greeting(self, name: str, deadline: float) -> bytes:
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"qemu exited {self.proc.returncode}; serial log:\n{self.tail()}")
            line = self._try_greeting(name)
            if line:
                self.greetings[name] = line
                return line
            time.sleep(2)
        raise AssertionError(f"no {name} greeting within {BOOT_TIMEOUT}s; serial log:\n{self.tail()}")

    def greeting(self, name: str) -> bytes:
        return self.greetings.get(name) or self.wait_greeting(name, time.monotonic() + 60)

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.serial_log.read_bytes().decode(errors="replace")
        except OSError:
            return "(no serial log)"
        return "\n".join(text.splitlines()[-lines:])

    def ssh(self, command: str, timeout: float = 120) -> str:
        proc = subprocess.run(
            ["ssh", "-i", str(self.key), "-p", str(self.ports["ssh"]), "-o", "BatchMode=yes",
             "-o", "StrictHostKeyChecking=accept-new", "-o", f"UserKnownHostsFile={self.dir / 'known_hosts'}",
             "-o", "HostKeyAlgorithms=ssh-ed25519", "-o", "ConnectTimeout=20", "-o", "LogLevel=ERROR",
             "vagrant@127.0.0.1", command],
            capture_output=True, text=True, timeout=timeout,
        )
        assert proc.returncode == 0, f"ssh {command!r} exited {proc.returncode}: {proc.stderr}{proc.stdout}"
        return proc.stdout

    def host_key_fingerprint(self) -> str:
        out = subprocess.run(["ssh-keygen", "-lf", str(self.dir / "known_hosts")], capture_output=True,
                             text=True, check=True).stdout
        return out.split()[1]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)


def boot_image(qcow2: Path, workdir: Path) -> BootedImage:
    """Boot QCOW2 (software emulation, -snapshot) and wait for its first greeting."""
    for tool in ("qemu-system-x86_64", "ssh", "debugfs"):
        if shutil.which(tool) is None:
            pytest.fail(f"missing {tool}: run `make deps-debian`")
    key = workdir / "vagrant.key"
    shutil.copyfile(vagrant_private_key(), key)
    key.chmod(0o600)
    ports: dict[str, int] = {}
    for name in GUEST_PORTS:
        p = free_port("127.0.0.1")
        while p in ports.values():
            p = free_port("127.0.0.1")
        ports[name] = p
    fwd = ",".join(f"hostfwd=tcp:127.0.0.1:{ports[n]}-:{g}" for n, g in GUEST_PORTS.items())
    cmd = [
        "qemu-system-x86_64", "-accel", "tcg", "-m", "1024", "-smp", "2", "-display", "none",
        "-serial", f"file:{workdir / 'serial.log'}", "-monitor", "none", "-snapshot",
        "-drive", f"file={qcow2},if=virtio,format=qcow2",
        "-netdev", f"user,id=n0,restrict=on,{fwd}", "-device", "virtio-net-pci,netdev=n0",
    ]
    started = time.monotonic()
    with open(workdir / "qemu.err", "wb") as err:  # qemu keeps its own copy of the descriptor
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    vm = BootedImage(proc, workdir, ports, started, key)
    try:
        from appliance.catalog import SERVICES

        built = {s.name for s in SERVICES if s.built}
        first = "submission" if "relay" in built else "imap" if "access" in built else "ssh"
        deadline = started + BOOT_TIMEOUT
        vm.wait_greeting(first, deadline)
        vm.banner_seconds = time.monotonic() - started
        vm.banner_service = first
        for name in ("submission", "imap", "ssh"):
            if name == "ssh" or (name == "submission" and "relay" in built) or (name == "imap" and "access" in built):
                vm.wait_greeting(name, deadline)
    except BaseException:
        vm.stop()
        raise
    return vm
