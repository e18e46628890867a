"""The firewall the states install: port 25 only from active registry members, customer ports open to all.

The box's real /etc/nftables.conf and its real appliance-firewall-sync (run in
the applied tree, with the tree's nft and venv) are loaded into a network
namespace; a member and an outsider connect from their own namespaces.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest

from tests.helpers.netns import Host, Net
from tests.states.tree import Tree

pytestmark = [pytest.mark.slow, pytest.mark.root]

# A stand-in listener for the box's ports (the firewall is under test, not the relay).
LISTENER = (
    "import selectors, socket\n"
    "sel = selectors.DefaultSelector()\n"
    "for port in (25, 587):\n"
    "    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "    s.bind(('0.0.0.0', port)); s.listen(16); sel.register(s, selectors.EVENT_READ)\n"
    "print('ready', flush=True)\n"
    "for _ in range(200):\n"
    "    for key, _ev in sel.select(timeout=120):\n"
    "        c, _ = key.fileobj.accept(); c.sendall(b'220 test\\r\\n'); c.close()\n"
)

CONNECT = (
    "import socket, sys\n"
    "try:\n"
    "    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)\n"
    "    print(s.recv(64).decode().strip())\n"
    "except ConnectionRefusedError:\n"
    "    print('refused')\n"
    "except TimeoutError:\n"
    "    print('timeout')\n"
)


@pytest.fixture
def net() -> Iterator[Net]:
    n = Net()
    try:
        yield n
    finally:
        stragglers = n.teardown()
        assert not n.leftovers()
        assert not stragglers, f"processes left in the test namespaces: {stragglers}"


def connect(client: Host, server: Host, port: int) -> str:
    return client.run("python3", "-c", CONNECT, server.address, str(port), check=True).stdout.strip()


def test_port_25_only_from_active_members(applied: Tree, net: Net) -> None:
    box, member, outsider, suspended = (net.add_host("box", 1), net.add_host("member", 2),
                                        net.add_host("outsider", 3), net.add_host("susp", 4))
    net.check_routes()
    registry = {"consortium": "Test", "code_of_practice": "2026-1", "members": [
        {"id": "isp-a", "status": "active", "domains": ["isp-a.example"],
         "relays": [{"host": "mx.isp-a.example", "addresses": [f"{member.address}/32"]}]},
        {"id": "isp-b", "status": "suspended", "domains": ["isp-b.example"],
         "relays": [{"host": "mx.isp-b.example", "addresses": [f"{suspended.address}/32"]}]},
    ]}
    reg_file = applied.file("/tmp/test-registry.json")
    reg_file.write_text(json.dumps(registry))
    server = box.popen("python3", "-c", LISTENER, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        # Without the firewall everyone reaches port 25.
        assert connect(outsider, box, 25) == "220 test"

        load = box.run("nft", "-f", str(applied.file("/etc/nftables.conf")))
        assert load.returncode == 0, load.stderr
        # Before a registry arrives nobody is a member.
        assert connect(member, box, 25) == "refused"
        sync = box.run("chroot", str(applied.path), "/usr/local/sbin/appliance-firewall-sync",
                       "--registry", "/tmp/test-registry.json")
        assert sync.returncode == 0, sync.stderr
        assert "1 IPv4" in sync.stdout

        assert connect(member, box, 25) == "220 test"
        assert connect(outsider, box, 25) == "refused"      # TCP reset, not a silent drop
        assert connect(suspended, box, 25) == "refused"     # suspended members are cut off too
        for client in (member, outsider, suspended):
            assert connect(client, box, 587) == "220 test"  # customers' submission is open to all

        # A broken registry leaves the last good set in place.
        reg_file.write_text("{not json")
        bad = box.run("chroot", str(applied.path), "/usr/local/sbin/appliance-firewall-sync",
                      "--registry", "/tmp/test-registry.json")
        assert bad.returncode == 1 and "sets left unchanged" in bad.stderr
        assert connect(member, box, 25) == "220 test"
    finally:
        server.kill()
        server.wait(timeout=30)
        reg_file.unlink(missing_ok=True)
