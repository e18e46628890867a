"""The operator's tools: keys kept private, bad registries never signed, a static server boxes sync from."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from tuf.api.metadata import Metadata

from appliance.tlsfiles import load_cert, make_self_signed, spki_sha256
from tests.helpers.box import Box
from tests.registry.conftest import Operator, add_box_member, make_operator, point_box


def test_init_keeps_private_keys_out_of_the_published_tree(tmp_path: Path) -> None:
    op = make_operator(tmp_path)
    keys = sorted(op.keys_dir.glob("*.key"))
    assert len(keys) == 6  # root 3, targets, snapshot, timestamp
    assert stat.S_IMODE(op.keys_dir.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(k.stat().st_mode) == 0o600 for k in keys)
    published = [p.read_bytes() for p in op.public.rglob("*") if p.is_file()]
    assert not any(b"PRIVATE KEY" in data for data in published)
    root = Metadata.from_file(str(op.pinned_root)).signed
    assert root.roles["root"].threshold == 2 and len(root.roles["root"].keyids) == 3
    assert root.consistent_snapshot
    rc, _, err = op.cli("init", "--keys-dir", str(op.public / "keys"), check=False)
    assert rc == 1 and "already a registry repository" in err
    rc, _, err = make_operator_error(tmp_path / "second", "--keys-dir", str(tmp_path / "second" / "public" / "k"))
    assert rc == 1 and "must not live inside the published tree" in err


def make_operator_error(repo: Path, *args: str) -> tuple[int, str, str]:
    proc = subprocess.run([sys.executable, "-m", "appliance", "registry", "init", str(repo), *args],
                          capture_output=True, text=True, timeout=60)
    return proc.returncode, proc.stdout, proc.stderr


def test_invalid_member_lists_are_refused_and_the_draft_kept(tmp_path: Path) -> None:
    op = make_operator(tmp_path)
    op.cli("add-member", "--without-probe", "--id", "isp-a", "--domain", "isp-a.example", "--relay", "mx1.isp-a.example=192.0.2.0/28")
    draft = (op.repo_dir / "registry.json").read_bytes()
    bad = [
        (["--id", "isp-b", "--domain", "isp-b.example", "--relay", "mx.isp-b.example=192.0.2.8"], "overlaps member isp-a"),
        (["--id", "isp-b", "--domain", "isp_b..example", "--relay", "mx.isp-b.example=198.51.100.1"], "malformed domain"),
        (["--id", "isp-b", "--domain", "isp-a.example", "--relay", "mx.isp-b.example=198.51.100.1"], "already belongs"),
        (["--id", "isp-b", "--domain", "isp-b.example", "--relay", "mx.isp-b.example=198.51.100.1", "--pin", "abc"],
         "spki_sha256"),
        (["--id", "isp-b", "--domain", "isp-b.example", "--relay", "mx.isp-b.example=10.0.0.0/8"], "too wide"),
        (["--id", "isp-b", "--domain", "isp-b.example", "--relay", "mx.isp-b.example=198.51.100.1",
          "--messages-per-minute", "0", "--burst", "5"], "limits out of range"),
        (["--id", "isp-a", "--domain", "isp-c.example", "--relay", "mx.isp-c.example=198.51.100.2"], "already exists"),
    ]
    for args, reason in bad:
        rc, _, err = op.cli("add-member", "--without-probe", *args, check=False)
        assert rc == 1, args
        assert reason in err and len(err.strip().splitlines()) == 1, (args, err)
        assert (op.repo_dir / "registry.json").read_bytes() == draft
    rc, _, err = op.cli("suspend", "nobody", check=False)
    assert rc == 1 and "member nobody: no such member" in err


def test_publish_bumps_versions_and_refuses_without_enough_keys(tmp_path: Path) -> None:
    op = make_operator(tmp_path)
    pin = "ab" * 32
    op.cli("add-member", "--without-probe", "--id", "isp-a", "--domain", "isp-a.example", "--relay", "mx1.isp-a.example:2525=192.0.2.10",
           "--pin", pin, "--messages-per-minute", "120", "--burst", "40")
    _, out, _ = op.cli("show")
    assert "isp-a" in out and "mx1.isp-a.example:2525" in out and "120.0, 40, 20" in out
    assert "draft has unpublished changes" in out
    _, out, _ = op.cli("publish")
    assert "targets v2" in out and "timestamp v2" in out
    published = json.loads(op.cli("show", "--published", "--json")[1])
    assert published["members"][0]["relays"][0]["spki_sha256"] == [pin]
    # A pin can also be taken from the member's certificate file.
    make_self_signed(tmp_path / "isp-a.pem", tmp_path / "isp-a.key", ["mx1.isp-a.example"])
    op.cli("update-member", "isp-a", "--pin", str(tmp_path / "isp-a.pem"))
    assert op.draft()["members"][0]["relays"][0]["spki_sha256"] == [pin, spki_sha256(load_cert(tmp_path / "isp-a.pem"))]
    op.cli("update-member", "isp-a", "--pin", pin, "--no-pins")
    assert op.draft()["members"][0]["relays"][0]["spki_sha256"] == [pin]
    op.cli("publish")
    _, out, _ = op.cli("publish", "--timestamp-only")
    assert "targets v3" in out and "timestamp v4" in out
    # The targets key is on another machine: publishing the member list must stop, not half-sign.
    targets_key = next(op.keys_dir.glob("targets-*.key"))
    targets_key.rename(tmp_path / targets_key.name)
    op.cli("suspend", "isp-a")
    rc, _, err = op.cli("publish", check=False)
    assert rc == 1 and "targets: 0 of the 1 required keys" in err
    assert Metadata.from_file(str(op.public / "metadata" / "timestamp.json")).signed.version == 4
    # ...and a key others can read is refused outright.
    (tmp_path / targets_key.name).rename(targets_key)
    os.chmod(targets_key, 0o644)
    rc, _, err = op.cli("publish", check=False)
    assert rc == 1 and "readable by others" in err


def test_box_syncs_over_http_from_registry_serve(box: Box, operator: Operator, tmp_path: Path) -> None:
    mid = add_box_member(operator, box)
    operator.cli("publish")
    server = subprocess.Popen([sys.executable, "-m", "appliance", "registry", "serve", str(operator.repo_dir),
                               "--host", "127.0.0.1", "--port", "0"], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        assert line.startswith("serving "), line
        url = line.split(" at ")[1].strip()
        listing = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", url + "metadata/"],
                                 capture_output=True, text=True, timeout=30)
        assert listing.stdout == "404"
        point_box(box, url, operator.pinned_root)
        res = box.cli("registry", "sync", "--once")
        assert "1 member(s)" in res.stdout
        operator.cli("suspend", mid)
        operator.cli("publish")
        box.cli("registry", "sync", "--once")
        reg = json.loads((box.cfg.registry_dir / "registry.json").read_text())
        assert reg["members"][0]["status"] == "suspended"
        assert box.status()["registry"]["source"] == url
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_ipv6_relays_and_rotating_a_single_key(tmp_path: Path) -> None:
    op = make_operator(tmp_path)
    op.cli("add-member", "--without-probe", "--id", "isp-6", "--domain", "isp-6.example", "--relay", "[2001:db8::25]:2525=2001:db8::25+192.0.2.25",
           "--relay", "mx2.isp-6.example=2001:db8:1::/64")
    relays = op.draft()["members"][0]["relays"]
    assert relays[0] == {"host": "2001:db8::25", "port": 2525, "addresses": ["2001:db8::25/128", "192.0.2.25/32"],
                         "spki_sha256": []}
    assert relays[1]["port"] == 25 and relays[1]["addresses"] == ["2001:db8:1::/64"]
    rc, _, err = op.cli("add-member", "--without-probe", "--id", "bad", "--domain", "bad.example", "--relay", "mx.bad.example", check=False)
    assert rc == 1 and "expected HOST[:PORT]=CIDR" in err
    # A leaked timestamp key: replace just that one; the root moves to version 2, signed by old and new.
    old_ts = next(op.keys_dir.glob("timestamp-*.key")).name.split("-")[1].split(".")[0]
    _, out, _ = op.cli("rotate-key", "timestamp", "--replace", old_ts)
    assert "root version 2" in out and "published" in out
    assert (op.keys_dir / "retired" / f"timestamp-{old_ts}.key").exists()
    root = Metadata.from_file(str(op.public / "metadata" / "2.root.json")).signed
    assert not any(k.startswith(old_ts) for k in root.roles["timestamp"].keyids)
    assert len(root.roles["root"].keyids) == 3
