"""The world itself: every host routes only over the test link, every box runs in its own namespace."""

from __future__ import annotations

import json
import sys

import pytest

from tests.consortium.harness import HOSTS, Consortium, built

pytestmark = [pytest.mark.consortium, pytest.mark.root]


def test_routes_stay_on_the_test_network(world: Consortium) -> None:
    world.net.check_routes()
    assert set(world.net.hosts) == set(HOSTS)


def test_each_box_listens_on_its_own_namespace_address_only(world: Consortium) -> None:
    for name, box in world.boxes.items():
        st = box.status()
        assert st, name
        if built("relay"):
            assert box.listening(box.port("mx")), f"{name}: relay not listening"
    home = world.host("home")
    assert home.run("ss", "-ltnH").stdout.strip() == "", "home must not listen on anything (no port 25 of its own)"


def test_every_box_trusts_the_same_member_list(world: Consortium) -> None:
    for name, box in world.boxes.items():
        reg = json.loads((box.dir / "lib" / "registry" / "registry.json").read_text())
        ids = {m["id"]: m for m in reg["members"]}
        assert set(ids) == {"isp-a", "isp-b"}, name
        assert ids["isp-a"]["relays"][0]["addresses"] == [f"{world.boxes['isp-a'].address}/32"]
        assert ids["isp-b"]["relays"][0]["addresses"] == [f"{world.boxes['isp-b'].address}/32"]


def test_isp_a_resolves_its_sponsored_edge_box_by_mx_inside_the_test_network(world: Consortium) -> None:
    colo = world.boxes["colo"]
    code = ("import dns.resolver; r = dns.resolver.resolve('colo.test', 'MX');"
            "print(dns.resolver.resolve(str(r[0].exchange), 'A')[0])")
    out = world.host("isp-a").run(sys.executable, "-c", code, check=True).stdout.strip()
    assert out == colo.address
