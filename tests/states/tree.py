"""A Debian 12 tree with the states applied (states/apply.sh), and booting it in systemd-nspawn.

The base tree is image-build/base-tree.sh's cached debootstrap (never modified:
every test run works on a `cp -a` copy). A booted container is reached with
nsenter into its namespaces; with --register=no there is no machinectl.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
APPLY = REPO / "states" / "apply.sh"
PILLAR_EXAMPLE = REPO / "states" / "pillar.example"


def base_tree() -> Path:
    out = subprocess.run([str(REPO / "image-build" / "base-tree.sh")], capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"image-build/base-tree.sh failed:\n{out.stderr[-3000:]}")
    return Path(out.stdout.strip().splitlines()[-1])


def build_wheel(out_dir: Path) -> Path:
    out = subprocess.run([str(REPO / "states" / "build-wheel.sh"), str(out_dir)], capture_output=True, text=True,
                         timeout=300, check=True)
    return Path(out.stdout.strip().splitlines()[-1])


@dataclass
class Applied:
    """One `states/apply.sh TREE PILLAR --out=json ...` run."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def states(self) -> dict[str, dict[str, Any]]:
        data = json.loads(self.stdout)["local"]
        if not isinstance(data, dict):  # a render error: a list of messages
            raise AssertionError(f"states did not compile: {data}")
        return data

    def failed(self) -> list[str]:
        return [f"{s['__id__']}: {s['comment']}" for s in self.states.values() if s["result"] is not True]

    def changed(self) -> dict[str, Any]:
        return {s["__id__"]: s["changes"] for s in self.states.values() if s["changes"]}

    def pending(self) -> list[str]:
        """test=True: states that would change something (result None) or report changes."""
        return [s["__id__"] for s in self.states.values() if s["result"] is None or s["changes"]]


@dataclass
class Tree:
    path: Path
    wheel: Path

    def apply(self, pillar: Path, *salt_args: str, timeout: float = 900) -> Applied:
        env = dict(os.environ, APPLIANCE_WHEEL=str(self.wheel))
        proc = subprocess.run([str(APPLY), str(self.path), str(pillar), "--out=json", *salt_args],
                              capture_output=True, text=True, timeout=timeout, env=env)
        return Applied(proc.returncode, proc.stdout, proc.stderr)

    def file(self, path: str) -> Path:
        return self.path / path.lstrip("/")


# --- booting the tree -------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


@dataclass
class Container:
    nspawn: subprocess.Popen[bytes]
    pid1: int
    log: Path

    def run(self, *argv: str, timeout: float = 60, check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run ARGV inside the container (all its namespaces: its files, its processes, its network)."""
        return subprocess.run(["nsenter", "-t", str(self.pid1), "-a", *argv], capture_output=True, text=True,
                              timeout=timeout, check=check)

    def run_in_netns(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run a host program inside the container's network namespace only."""
        return subprocess.run(["nsenter", "-t", str(self.pid1), "-n", *argv], capture_output=True, text=True,
                              timeout=timeout)


@contextlib.contextmanager
def booted(tree: Path, log: Path, timeout: float = 120, netns: str = "",
           nspawn_args: tuple[str, ...] = ()) -> Iterator[Container]:
    """Boot TREE with systemd-nspawn (changes go to a tmpfs overlay), yield it, power it off.

    NETNS: the name of a network namespace the test made (tests/helpers/netns.py) to boot
    the container in, instead of a private one with only loopback. NSPAWN_ARGS: more
    systemd-nspawn options (e.g. --bind-ro=), before the kernel command line.
    """
    network = f"--network-namespace-path=/run/netns/{netns}" if netns else "--private-network"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            ["systemd-nspawn", "-D", str(tree), "-b", "--register=no", "--keep-unit", network,
             "--volatile=overlay", "--console=passive", *nspawn_args,
             "systemd.mask=systemd-networkd-wait-online.service"],
            stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    pid1 = 0
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            # The container's init, once it has exec'd systemd: nspawn may fork a short-lived
            # helper first (seen with --network-namespace-path), whose pid would go stale.
            kids = [k for k in _children(proc.pid) if _comm(k) == "systemd"]
            if kids:
                pid1 = kids[0]
                break
            time.sleep(0.1)
        if not pid1:
            raise RuntimeError(f"systemd-nspawn did not start a container: {log.read_text(errors='replace')[-2000:]}")
        c = Container(proc, pid1, log)
        while time.monotonic() < deadline:
            state = c.run("systemctl", "is-system-running").stdout.strip()
            if state in ("running", "degraded"):
                break
            time.sleep(0.5)
        else:
            raise RuntimeError(f"container not up after {timeout}s: {c.run('systemctl', '--failed').stdout}")
        yield c
    finally:
        if proc.poll() is None:
            if pid1:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid1, signal.SIGRTMIN + 3)  # systemd: halt
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
