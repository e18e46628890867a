"""Each attack on the registry channel is refused, the last good registry is kept, and the box says why.

The box syncs with the real CLI (`appliance registry sync --once`, ngclient
underneath); the attacker rewrites, replays and re-signs files in the published
tree the box fetches from. The attacker's goal is always the same: get the
address 127.0.0.66 accepted on port 25, or keep a suspended member in.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from typing import Any

import pytest
from securesystemslib.signer import CryptoSigner

from appliance.registry.repo import OperatorRepo
from tests.conftest import require
from tests.helpers.box import Box
from tests.registry import attacker
from tests.registry.conftest import Operator, greeting_verdict, relay_running, sync_in_process

EVIL_ADDRESS = "127.0.0.66"
EVIL = {"id": "evil", "name": "Evil", "status": "active", "abuse": "abuse@evil.test", "domains": ["evil.test"],
        "relays": [{"host": "mx.evil.test", "port": 25, "addresses": [f"{EVIL_ADDRESS}/32"]}]}


def trusted(box: Box) -> tuple[bytes, dict[str, Any]]:
    d = box.cfg.registry_dir
    return (d / "registry.json").read_bytes(), json.loads((d / "state.json").read_text())


def sync(box: Box) -> Any:
    return box.cli("registry", "sync", "--once", check=False)


def assert_refused(box: Box, reason: str) -> str:
    """Sync once: refused with REASON, registry.json byte for byte as before, the failure counted."""
    before, state = trusted(box)
    res = sync(box)
    assert res.returncode == 1, f"update accepted: {res.stdout}"
    assert "last good registry kept" in res.stderr and reason in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    after, new_state = trusted(box)
    assert after == before
    assert new_state["version"] == state["version"]
    assert new_state["consecutive_failures"] == state["consecutive_failures"] + 1
    assert b"evil" not in after
    return res.stderr


def evil_registry(op: Operator) -> dict[str, Any]:
    reg = op.draft()
    reg["members"].append(EVIL)
    return reg


def current_target(op: Operator) -> Any:
    draft = (op.repo_dir / "registry.json").read_bytes()
    return next(p for p in (op.public / "targets").iterdir() if p.read_bytes() == draft)


# --- the attacks: each changes what the box will fetch and returns the reason it must give ---------


def tampered_target(op: Operator, box: Box) -> str:
    op.cli("update-member", "other", "--burst", "10", "--messages-per-minute", "60")
    op.cli("publish")
    current_target(op).write_text(json.dumps(evil_registry(op)))
    return "length or hash mismatch"


def bad_signature(op: Operator, box: Box) -> str:
    # The attacker holds the online snapshot and timestamp keys but not the targets keys.
    attacker.forge_release(op.public, evil_registry(op), [CryptoSigner.generate_ed25519()],
                           attacker.keys(op.keys_dir, "snapshot"), attacker.keys(op.keys_dir, "timestamp"))
    return "signature check failed"


def fewer_signatures_than_threshold(op: Operator, box: Box) -> str:
    one_of_two = attacker.keys(op.keys_dir, "targets")[:1]
    attacker.forge_release(op.public, evil_registry(op), one_of_two,
                           attacker.keys(op.keys_dir, "snapshot"), attacker.keys(op.keys_dir, "timestamp"))
    return "signed by 1/2 keys"


def rollback(op: Operator, box: Box) -> str:
    old = attacker.snapshot_files(op.public)
    op.cli("suspend", "other")
    op.cli("publish")
    assert sync(box).returncode == 0
    assert json.loads(trusted(box)[0])["members"][1]["status"] == "suspended"
    # Replay the previous, validly signed, unexpired release (other still active).
    attacker.restore(op.public, old, ["metadata/timestamp.json", "metadata/snapshot.json", "metadata/targets.json"])
    return "version check failed"


def freeze(op: Operator, box: Box) -> str:
    # A release signed long ago, replayed after its timestamp ran out.
    OperatorRepo(op.repo_dir).update_member("other", {"name": "Other (old release)"})
    OperatorRepo(op.repo_dir).publish(now=dt.datetime.now(dt.UTC) - dt.timedelta(days=20))
    return "expired"


def mix_and_match(op: Operator, box: Box) -> str:
    op.cli("update-member", "other", "--name", "Other v1")
    op.cli("publish")
    op.cli("update-member", "other", "--name", "Other v2")
    op.cli("publish")
    meta = op.public / "metadata"
    newest = attacker.load(op.public, "targets.json").signed.version
    # Current timestamp and snapshot, but the targets of the release before.
    (meta / f"{newest}.targets.json").write_bytes((meta / f"{newest - 1}.targets.json").read_bytes())
    return "mismatch"


def oversized_metadata(op: Operator, box: Box) -> str:
    ts = op.public / "metadata" / "timestamp.json"
    good = ts.read_bytes()
    # Endless data: a timestamp padded far past any sane size.
    ts.write_bytes(good[:-2] + b" " * 2_000_000 + good[-2:])
    return "larger than allowed"


def oversized_target(op: Operator, box: Box) -> str:
    op.cli("update-member", "other", "--name", "Other, padded")
    op.cli("publish")
    with current_target(op).open("ab") as fh:
        fh.write(b" " * 1_000_000)
    return "larger than allowed"


def root_rotation_below_threshold(op: Operator, box: Box) -> str:
    # The attacker stole one of the three root keys (threshold 2) and tries to take the root role over.
    stolen = attacker.keys(op.keys_dir, "root")[:1]
    mine = CryptoSigner.generate_ed25519()
    attacker.forge_root(op.public, [*stolen, mine], mine)
    return "signature check failed"


ATTACKS: list[Callable[[Operator, Box], str]] = [
    tampered_target, bad_signature, fewer_signatures_than_threshold, rollback, freeze, mix_and_match,
    oversized_metadata, oversized_target, root_rotation_below_threshold,
]


def repair(op: Operator, root_version: int) -> None:
    """The operator notices and publishes a fresh release above anything the attacker wrote."""
    meta = op.public / "metadata"
    for forged in meta.glob("*.root.json"):
        if int(forged.name.split(".")[0]) > root_version:
            forged.unlink()
    (meta / "root.json").write_bytes((meta / f"{root_version}.root.json").read_bytes())
    op.cli("update-member", "other", "--name", f"Other after repair {dt.datetime.now(dt.UTC).timestamp()}")
    op.cli("publish")


def test_root_rotation_signed_by_old_and_new_keys_is_accepted(member_box: Box, operator: Operator) -> None:
    old_root_keys = {f.name for f in operator.keys_dir.glob("root-*.key")}
    operator.cli("rotate-key", "root")
    operator.cli("rotate-key", "targets")
    assert {f.name for f in (operator.keys_dir / "retired").glob("root-*.key")} == old_root_keys
    operator.cli("suspend", "other")
    operator.cli("publish")
    res = sync(member_box)
    assert res.returncode == 0, res.stderr
    tuf = member_box.cfg.registry_dir / "tuf"
    assert attacker.Metadata.from_file(str(tuf / "root.json")).signed.version == 3
    assert json.loads(trusted(member_box)[0])["members"][1]["status"] == "suspended"
    # The retired root keys can no longer sign a root the box accepts.
    retired = attacker.keys(operator.keys_dir / "retired", "root")
    attacker.forge_root(operator.public, retired, CryptoSigner.generate_ed25519())
    assert_refused(member_box, "signature check failed")


def test_repeated_refusals_raise_the_alarm_in_status(member_box: Box, operator: Operator) -> None:
    version = trusted(member_box)[1]["version"]
    bad_signature(operator, member_box)
    for _ in range(member_box.cfg.registry.alarm_after_failures - 1):
        assert sync_in_process(member_box)[0] == 1
    assert_refused(member_box, "signature check failed")
    reg = member_box.status()["registry"]
    assert reg["consecutive_failures"] == 3
    assert "failed 3 times" in reg["alarm"] and "signature" in reg["alarm"]
    assert reg["version"] == version and reg["members"] == 2
    metrics = (member_box.cfg.registry_dir / "metrics.prom").read_text()
    assert "appliance_registry_alarm 1.0" in metrics


@pytest.mark.peers
def test_every_attack_is_refused_and_the_relay_answers_as_before(member_box: Box, operator: Operator) -> None:
    require("swaks")
    member = member_box.cfg.listeners.mx.host
    rcpt = f"postmaster@{member_box.domain}"
    tuf = member_box.cfg.registry_dir / "tuf"
    with relay_running(member_box, up=False):
        assert greeting_verdict(member_box, member, rcpt) == "accepted"
        assert greeting_verdict(member_box, EVIL_ADDRESS, rcpt) == "554 5.7.1"
        for attack in ATTACKS:
            reason = attack(operator, member_box)
            assert_refused(member_box, reason)
            # The relay still holds the last good snapshot: the member in, the attacker out.
            assert greeting_verdict(member_box, member, rcpt) == "accepted", attack.__name__
            assert greeting_verdict(member_box, EVIL_ADDRESS, rcpt) == "554 5.7.1", attack.__name__
            assert attacker.Metadata.from_file(str(tuf / "root.json")).signed.version == 1, attack.__name__
            # Once the operator publishes again, the box follows.
            repair(operator, root_version=1)
            rc, _, err = sync_in_process(member_box)
            assert rc == 0, f"{attack.__name__}: {err}"
