"""The namespace helper keeps its promises: routes only on the test link, and a teardown that leaves nothing."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys

import pytest

from tests.helpers.netns import Net, root_networks
from tests.helpers.wait import wait_for

pytestmark = [pytest.mark.consortium, pytest.mark.root]

ECHO_SERVER = """
import socket
s = socket.create_server(("{addr}", 7000))
print("listening", flush=True)
c, peer = s.accept()
c.sendall(("hello from " + peer[0]).encode())
c.close()
"""
ECHO_CLIENT = """
import socket
print(socket.create_connection(("{addr}", 7000), timeout=10).recv(100).decode())
"""


@pytest.fixture
def net() -> Net:
    if os.geteuid() != 0:
        pytest.fail("network namespaces need root: run `make consortium` as root")
    return Net()


def test_a_two_host_net_routes_only_over_its_link_and_tears_down_to_nothing(net: Net) -> None:
    try:
        a, b = net.add_host("a", 1), net.add_host("b", 2)
        net.check_routes()
        # The test /24 exists only inside the namespaces.
        test_net = ipaddress.ip_network(f"{net.prefix}.0/24")
        assert not any(n.version == 4 and n.overlaps(test_net) for n in root_networks())
        # Traffic flows across the bridge: a TCP echo from a to b.
        server = b.popen(sys.executable, "-c", ECHO_SERVER.format(addr=b.address), stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None and server.stdout.readline().strip() == "listening"
        got = a.run(sys.executable, "-c", ECHO_CLIENT.format(addr=b.address), check=True).stdout.strip()
        assert got == f"hello from {a.address}"
        server.wait(10)
        # A process left running inside a namespace is found and killed by the teardown.
        sleeper = b.popen("sleep", "300")
        # `ip netns exec` enters the namespace a moment after Popen returns; a teardown listing the
        # namespace's processes before that would not see it (the race CI once lost).
        wait_for("the sleeper inside b's namespace", lambda: sleeper.pid in b.pids(), 10)
    finally:
        stragglers = net.teardown()
    assert sleeper.wait(10) == -9
    assert stragglers == [sleeper.pid]
    assert net.leftovers() == []
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert net.tag not in out
