"""Network namespaces for multi-box tests, obeying the network rule.

Every host is a namespace this helper creates, joined by a veth pair to a
bridge that lives in its own namespace. Every client runs inside a namespace
(`Host.run` / `Host.popen`), never in the machine's own. Before anything is
sent, `Net.check_routes` asserts with `ip route get` that each test address is
reached over the test link from every host.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import uuid
from dataclasses import dataclass, field
from typing import Any


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


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


@dataclass
class Net:
    """A /24 of test hosts on one bridge; `prefix` like '10.254.7'."""

    prefix: str
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    hosts: dict[str, Host] = field(default_factory=dict)
    _bridge_ns: str = ""

    def __post_init__(self) -> None:
        if os.geteuid() != 0:
            raise PermissionError("network namespaces need root")
        net = ipaddress.ip_network(f"{self.prefix}.0/24")
        if not net.is_private:
            raise ValueError("test networks must be private ranges that exist only inside our namespaces")
        self._bridge_ns = f"br-{self.tag}"
        _ip("netns", "add", self._bridge_ns)
        _ip("-n", self._bridge_ns, "link", "add", "br0", "type", "bridge")
        _ip("-n", self._bridge_ns, "link", "set", "br0", "up")
        _ip("-n", self._bridge_ns, "link", "set", "lo", "up")

    def add_host(self, name: str, octet: int) -> Host:
        ns = f"{name}-{self.tag}"
        _ip("netns", "add", ns)
        idx = len(self.hosts)
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
            r = h.run("ip", "-o", "route", "get", "192.0.2.1")
            if r.returncode == 0:
                raise AssertionError(f"{h.name} has a route off the test network: {r.stdout.strip()}")

    def teardown(self) -> None:
        for h in list(self.hosts.values()):
            # Kill anything still running in the namespace before deleting it.
            pids = subprocess.run(["ip", "netns", "pids", h.name], capture_output=True, text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), 9)
                except (ProcessLookupError, ValueError):
                    pass
            subprocess.run(["ip", "netns", "del", h.name], capture_output=True)
        self.hosts.clear()
        subprocess.run(["ip", "netns", "del", self._bridge_ns], capture_output=True)


def leftover_namespaces(tag: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if tag in line]
