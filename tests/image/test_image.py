"""The shipped box: `make image` builds a disk image and a Vagrant box from the states, the
image boots under qemu (software emulation) to its greetings, every per-box secret is made
on first boot and none is in the image, and Vagrant accepts the Vagrantfile and the box.

The build runs once per session (image_build fixture) and is reused while its inputs are
unchanged; the boot runs once per module with -snapshot, so the image is never modified.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.catalog import SERVICES
from tests.image.imagetools import (
    BUILD,
    REPO,
    BootedImage,
    boot_image,
    build_image,
    ensure_image,
    image_paths,
    vagrant_private_key,
)

pytestmark = [pytest.mark.slow, pytest.mark.root]

BUILT = {s.name for s in SERVICES if s.built}


@pytest.fixture(scope="session")
def image_build() -> Iterator[dict[str, object]]:
    if os.geteuid() != 0:
        pytest.skip("the image build needs root (chroot, mounts)")
    built = build_image()
    yield built
    Path(str(built["raw"])).unlink(missing_ok=True)  # the raw copy made for inspection


@pytest.fixture(scope="module")
def booted(image_build: dict[str, object], tmp_path_factory: pytest.TempPathFactory) -> Iterator[BootedImage]:
    vm = boot_image(BUILD / "appliance.qcow2", tmp_path_factory.mktemp("boot"))
    try:
        yield vm
    finally:
        vm.stop()


# --- the artefacts --------------------------------------------------------------------------


def test_qcow2_is_a_4_gib_bootable_disk(image_build: dict[str, object]) -> None:
    info = json.loads(
        subprocess.run(["qemu-img", "info", "--output=json", str(BUILD / "appliance.qcow2")],
                       capture_output=True, text=True, check=True).stdout
    )
    assert info["format"] == "qcow2"
    assert info["virtual-size"] == 4 * 1024**3
    # An MBR with GRUB's boot code and one bootable Linux partition at 1 MiB.
    sfdisk = subprocess.run(["sfdisk", "--json", str(image_build["raw"])], capture_output=True, text=True, check=True)
    parts = json.loads(sfdisk.stdout)["partitiontable"]["partitions"]
    assert len(parts) == 1 and parts[0]["start"] == 2048 and parts[0].get("bootable") is True
    assert b"GRUB" in Path(str(image_build["raw"])).read_bytes()[:512]


def test_vagrant_box_has_libvirt_metadata_and_the_disk(image_build: dict[str, object]) -> None:
    with tarfile.open(BUILD / "appliance.box") as tar:
        names = sorted(tar.getnames())
        assert names == ["Vagrantfile", "box.img", "metadata.json"]
        meta = json.load(tar.extractfile("metadata.json"))  # type: ignore[arg-type]
        assert meta == {"provider": "libvirt", "format": "qcow2", "virtual_size": 4}
        assert tar.getmember("box.img").size == (BUILD / "appliance.qcow2").stat().st_size


def test_image_contains_no_per_box_secret(image_build: dict[str, object], tmp_path: Path) -> None:
    paths = image_paths(Path(str(image_build["raw"])), tmp_path)
    # No SSH host key, no machine-id, no TLS key, no DKIM key, no Salt minion key.
    assert not [p for p in paths.listing("/etc/ssh") if p.startswith("ssh_host_")]
    assert paths.read("/etc/machine-id") == b""
    for gone in ("/etc/appliance/tls/selfsigned/key.pem", "/etc/appliance/tls/selfsigned/cert.pem",
                 "/etc/appliance/dkim/mail.key", "/etc/appliance/enrollment.json",
                 "/var/lib/systemd/random-seed", "/opt/appliance/salt/etc/pki"):
        assert not paths.exists(gone), f"{gone} is in the image"
    # And no private key anywhere a box keeps its own files.
    keys = paths.private_keys(["/etc", "/var", "/root", "/home", "/opt/appliance/salt/etc"])
    assert keys == [], f"private keys in the image: {keys}"
    # What the first boot needs is there.
    assert paths.exists("/etc/systemd/system/multi-user.target.wants/appliance-firstboot.service")
    assert paths.exists("/etc/appliance/appliance.toml")


def test_a_failed_stage_is_named(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the image build needs root")
    bad = tmp_path / "bad-pillar.sls"
    bad.write_text("box:\n  hostname: mx.example.test\n")  # not under `appliance:`: install.sh refuses it
    env = {**os.environ, "IMAGE_BUILD_DIR": str(tmp_path / "build"), "IMAGE_PILLAR": str(bad)}
    proc = subprocess.run(["bash", str(REPO / "image-build/build.sh")], env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode != 0
    assert "stage tree done in" in proc.stdout and "stage states:" in proc.stdout
    assert "FAILED in stage 'states'" in proc.stderr
    assert "top-level key 'appliance:'" in proc.stderr  # the stage log's tail says why
    assert not (tmp_path / "build" / "appliance.qcow2").exists()
    # Nothing stays mounted in the failed tree, so it can simply be deleted.
    assert str(tmp_path) not in Path("/proc/self/mountinfo").read_text()
    shutil.rmtree(tmp_path / "build")


# --- the booted image -----------------------------------------------------------------------


def test_boot_reaches_the_greetings(booted: BootedImage) -> None:
    if "relay" in BUILT:
        assert booted.greeting("submission").startswith(b"220 ")
    if "access" in BUILT:
        assert booted.greeting("imap").startswith(b"* OK")
    assert booted.greeting("ssh").startswith(b"SSH-2.0-OpenSSH")


def test_status_over_ssh_shows_every_built_service_running(booted: BootedImage) -> None:
    out = booted.ssh("sudo appliance status --json")
    st = json.loads(out)
    assert st["supervisor"] == "running"
    states = {s["name"]: s["state"] for s in st["services"]}
    for name, state in states.items():
        assert state == ("running" if name in BUILT else "not built"), states
    assert st["tls"]["source"] == "self-signed" and st["tls"]["days_left"] > 300
    assert booted.ssh("systemctl is-active appliance.service appliance-firstboot.service").split() == ["active"] * 2


def test_first_boot_made_this_boxs_own_secrets(booted: BootedImage) -> None:
    machine_id = booted.ssh("cat /etc/machine-id").strip()
    assert len(machine_id) == 32
    host_keys = booted.ssh("ls /etc/ssh").split()
    assert {"ssh_host_ed25519_key", "ssh_host_rsa_key", "ssh_host_ecdsa_key"} <= set(host_keys)
    # The key sshd presented to us is the one made on this box.
    assert booted.host_key_fingerprint() in booted.ssh("ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub")
    # Keys readable by the services' group, by nobody else.
    mode = booted.ssh("sudo stat -c '%U:%G %a' /etc/appliance/dkim/mail.key /etc/appliance/tls/selfsigned/key.pem")
    assert mode.splitlines() == ["root:appliance 640"] * 2
    assert "v=DKIM1; k=rsa; p=" in booted.ssh("sudo cat /etc/appliance/dkim/mail.txt")
    enroll = json.loads(booted.ssh("sudo cat /etc/appliance/enrollment.json"))
    assert enroll["status"] == "not enrolled"
    assert len(enroll["spki_sha256"][0]) == 64
    assert "firstboot: done" in booted.ssh("sudo journalctl -b -u appliance-firstboot --no-pager -o cat")


def test_vagrant_user_has_passwordless_sudo(booted: BootedImage) -> None:
    assert booted.ssh("sudo -n id -u").strip() == "0"
    assert booted.ssh("command -v salt-call").strip() == "/usr/local/bin/salt-call"


# --- Vagrant --------------------------------------------------------------------------------


def test_vagrantfile_validates(tmp_path: Path) -> None:
    if shutil.which("vagrant") is None:
        pytest.fail("vagrant missing: run `make deps-debian`")
    # Vagrant's per-project state goes to a temp dir, not into the checkout.
    env = {**os.environ, "VAGRANT_DOTFILE_PATH": str(tmp_path / "dot-vagrant"), "VAGRANT_CHECKPOINT_DISABLE": "1",
           "VAGRANT_DEFAULT_PROVIDER": "libvirt"}
    proc = subprocess.run(["vagrant", "validate"], cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Vagrantfile validated successfully" in proc.stdout
    listed = subprocess.run(["vagrant", "status", "--machine-readable"], cwd=REPO, capture_output=True,
                            text=True, timeout=300, env=env)
    machines = {line.split(",")[1] for line in listed.stdout.splitlines() if ",state," in line}
    assert machines == {"registry", "isp-a", "isp-b", "colo"}


def test_vagrant_box_add_works_offline(image_build: dict[str, object], tmp_path: Path) -> None:
    # A private VAGRANT_HOME: the tester's boxes are not touched, and removing it removes the box.
    env = {**os.environ, "VAGRANT_HOME": str(tmp_path / "vagrant.d"), "VAGRANT_CHECKPOINT_DISABLE": "1"}
    add = subprocess.run(["vagrant", "box", "add", "--name", "appliance-test", str(BUILD / "appliance.box")],
                         env=env, capture_output=True, text=True, timeout=600)
    try:
        assert add.returncode == 0, add.stdout + add.stderr
        listed = subprocess.run(["vagrant", "box", "list"], env=env, capture_output=True, text=True, timeout=120)
        assert "appliance-test" in listed.stdout and "libvirt" in listed.stdout
    finally:
        subprocess.run(["vagrant", "box", "remove", "--force", "appliance-test"], env=env, capture_output=True,
                       timeout=120)
    gone = subprocess.run(["vagrant", "box", "list"], env=env, capture_output=True, text=True, timeout=120)
    assert "appliance-test" not in gone.stdout


def test_boot_to_banner_is_recorded(booted: BootedImage, image_build: dict[str, object]) -> None:
    # Not a timing assert: the numbers go to build/image-stats.json for docs/benchmarks.md.
    stats_file = BUILD / "image-stats.json"
    stats = json.loads(stats_file.read_text())
    stats["boot_to_banner_seconds"] = round(booted.banner_seconds, 1)
    stats["banner"] = booted.banner_service
    stats["recorded"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    stats_file.write_text(json.dumps(stats) + "\n")
    assert booted.banner_seconds > 0
    assert vagrant_private_key().exists()


# --- PROFILE=production ---------------------------------------------------------------------

# A public key only (its private half was never kept): what an operator puts in the pillar.
OPERATOR_KEY = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHT+UTZoZ5TrBnxtaOQGJ9eESBcDe9FlgtTOn26M8/Mj "
                "production-image-test")


def test_production_image_has_no_vagrant_user_and_only_the_pillars_key(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the image build needs root (chroot, mounts)")
    # The build pillar plus the operator's key (appliance:ssh:authorized_keys).
    pillar = tmp_path / "production-pillar.sls"
    pillar.write_text((REPO / "image-build/build-pillar.sls").read_text()
                      + f"  ssh:\n    authorized_keys:\n      - {OPERATOR_KEY}\n")
    build = BUILD / "production-test"
    ensure_image(build, profile="production", pillar=pillar)  # cached like the Vagrant image
    assert (build / "appliance.qcow2").exists() and not (build / "appliance.box").exists()
    raw = tmp_path / "production.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(build / "appliance.qcow2"), str(raw)], check=True,
                   timeout=600)
    try:
        files = image_paths(raw, tmp_path / "scratch")
        users = {line.split(":")[0] for line in files.read("/etc/passwd").decode().splitlines()}
        assert "vagrant" not in users and "admin" in users
        assert not files.exists("/home/vagrant") and not files.exists("/etc/sudoers.d/vagrant")
        keys = [ln for ln in files.read("/home/admin/.ssh/authorized_keys").decode().splitlines()
                if ln and not ln.startswith("#")]
        assert keys == [OPERATOR_KEY]
        assert "PasswordAuthentication no" in files.read("/etc/ssh/sshd_config.d/50-appliance.conf").decode()
        # Vagrant's publicly known key is nowhere in the image.
        insecure = Path(str(vagrant_private_key()) + ".pub").read_text().split()[1]
        for root in ("/home", "/root", "/etc"):
            out = tmp_path / "dump" / root.strip("/")
            out.mkdir(parents=True, exist_ok=True)
            files._debugfs(f"rdump {root} {out}")
            hits = [str(f) for f in out.rglob("*") if f.is_file() and not f.is_symlink()
                    and insecure.encode() in f.read_bytes()]
            assert hits == [], f"Vagrant's insecure key in the production image: {hits}"
    finally:
        raw.unlink(missing_ok=True)
