"""Network namespaces for multi-box tests, obeying the network rule.

Every host is a namespace this helper creates, joined by a veth pair to a
bridge that lives in its own namespace. Every client runs inside a namespace
(`Host.run` / `Host.popen`), never in the machine's own. Before anything is
sent, `Net.check_routes` asserts with `ip route get` that each test address is
reached over the test link from every host, and that nothing else is routable.

The test /24 is private and must not be configured in the machine's own
namespace (`Net` refuses one that is), so the addresses exist only inside the
namespaces this helper creates. `Net.teardown` kills whatever still runs in
them, deletes every namespace and link it made, and `Net.leftovers` proves it.
"""

from __future__ import annotations

import ipaddress
import os
import random
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from typing import Any


def _ip(*args: str) -> str:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def root_networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """Networks configured on the machine's own interfaces."""
    nets = []
    for line in _ip("-o", "addr", "show").splitlines():
        parts = line.split()
        if "inet" in parts:
            nets.append(ipaddress.ip_interface(parts[parts.index("inet") + 1]).network)
        elif "inet6" in parts:
            nets.append(ipaddress.ip_interface(parts[parts.index("inet6") + 1]).network)
    return nets


def free_private_prefix() -> str:
    """A random 10.X.Y (as a /24) that the machine's own namespace does not use."""
    used = root_networks()
    for _ in range(100):
        prefix = f"10.{random.randint(200, 250)}.{random.randint(1, 254)}"
        net = ipaddress.ip_network(f"{prefix}.0/24")
        if not any(net.overlaps(u) for u in used if u.version == 4):
            return prefix
    raise RuntimeError("no free 10.x /24 for the test network")


@dataclass
class Host:
    name: str  # namespace name
    address: str
    dev: str
    net: Net

    def cmd(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, *argv: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("timeout", 120)
        return subprocess.run(self.cmd(*argv), **kw)

    def popen(self, *argv: str, **kw: Any) -> subprocess.Popen[Any]:
        return subprocess.Popen(self.cmd(*argv), **kw)

    def route_dev(self, dest: str) -> str:
        out = self.run("ip", "-o", "route", "get", dest, check=True).stdout
        parts = out.split()
        return parts[parts.index("dev") + 1] if "dev" in parts else ""

    def pids(self) -> list[int]:
        """Processes living in this namespace."""
        out = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True).stdout
        return [int(p) for p in out.split() if p.isdigit()]


def listening(host: Host, port: int, proto: str = "t") -> bool:
    """Whether something in HOST's namespace listens on PORT (PROTO "t": TCP, "u": UDP; `ss -l`)."""
    out = host.run("ss", f"-l{proto}nH").stdout
    return any(len(f := line.split()) > 3 and f[3].endswith(f":{port}") for line in out.splitlines())


@dataclass
class Net:
    """A /24 of test hosts on one bridge; `prefix` like '10.254.7' (default: a free random one)."""

    prefix: str = ""
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    hosts: dict[str, Host] = field(default_factory=dict)
    _bridge_ns: str = ""

    def __post_init__(self) -> None:
        if os.geteuid() != 0:
            raise PermissionError("network namespaces need root")
        self.prefix = self.prefix or free_private_prefix()
        net = ipaddress.ip_network(f"{self.prefix}.0/24")
        if not net.is_private:
            raise ValueError("test networks must be private ranges that exist only inside our namespaces")
        clash = [str(u) for u in root_networks() if u.version == 4 and net.overlaps(u)]
        if clash:
            raise ValueError(f"test network {net} overlaps the machine's own {clash}: pick another prefix")
        self._bridge_ns = f"br-{self.tag}"
        _ip("netns", "add", self._bridge_ns)
        _ip("-n", self._bridge_ns, "link", "add", "br0", "type", "bridge")
        _ip("-n", self._bridge_ns, "link", "set", "br0", "up")
        _ip("-n", self._bridge_ns, "link", "set", "lo", "up")

    def add_host(self, name: str, octet: int) -> Host:
        ns = f"{name}-{self.tag}"
        _ip("netns", "add", ns)
        idx = len(self.hosts)
        # Both ends are created directly inside namespaces: the machine's own
        # namespace never holds a link of ours, not even for a moment.
        outer, inner = f"vb{idx}{self.tag}"[:15], "eth0"
        _ip("link", "add", outer, "netns", self._bridge_ns, "type", "veth", "peer", "name", inner, "netns", ns)
        _ip("-n", self._bridge_ns, "link", "set", outer, "master", "br0")
        _ip("-n", self._bridge_ns, "link", "set", outer, "up")
        addr = f"{self.prefix}.{octet}"
        _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", inner)
        _ip("-n", ns, "link", "set", inner, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        host = Host(ns, addr, inner, self)
        self.hosts[name] = host
        return host

    def check_routes(self) -> None:
        """Every host reaches every other host's address over its test link, and nothing else."""
        for h in self.hosts.values():
            for other in self.hosts.values():
                dev = h.route_dev(other.address)
                expect = "lo" if other is h else h.dev
                if dev != expect:
                    raise AssertionError(f"{h.name}: route to {other.address} goes via {dev!r}, not {expect!r}")
            # No default route: anything not on the test net is unreachable from inside.
            for outside in ("192.0.2.1", "8.8.8.8"):
                r = h.run("ip", "-o", "route", "get", outside)
                if r.returncode == 0:
                    raise AssertionError(f"{h.name} has a route off the test network: {r.stdout.strip()}")

    def kill_all(self, timeout: float = 10.0) -> list[int]:
        """SIGKILL every process still inside our namespaces; returns the pids that were there."""
        found: list[int] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pids = [p for h in self.hosts.values() for p in h.pids()]
            if not pids:
                break
            found += [p for p in pids if p not in found]
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        return found

    def teardown(self) -> list[int]:
        """Kill stragglers, delete every namespace (links go with them); returns the stragglers' pids."""
        stragglers = self.kill_all()
        for ns in [h.name for h in self.hosts.values()] + [self._bridge_ns]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        return stragglers

    def leftovers(self) -> list[str]:
        """Namespaces or links of this net that still exist (empty after a clean teardown)."""
        left = [f"netns {n}" for n in leftover_namespaces(self.tag)]
        links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
        left += [f"link {line.split(':')[1].strip()}" for line in links.splitlines() if self.tag in line]
        return left


def leftover_namespaces(tag: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if tag in line]
