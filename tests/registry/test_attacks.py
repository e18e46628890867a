"""Each attack on the registry channel is refused, the last good registry is kept, and the box says why.

The box syncs with the real CLI (`appliance registry sync --once`), ngclient
underneath; the attacker rewrites, replays and re-signs files in the published
tree the box fetches from.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from securesystemslib.signer import CryptoSigner

from appliance.registry.repo import OperatorRepo
from tests.helpers.box import Box
from tests.registry import attacker
from tests.registry.conftest import Operator

EVIL = {"id": "evil", "name": "Evil", "status": "active", "abuse": "abuse@evil.test", "domains": ["evil.test"],
        "relays": [{"host": "mx.evil.test", "port": 25, "addresses": ["203.0.113.66/32"]}]}


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


def test_tampered_target_is_refused(member_box: Box, operator: Operator) -> None:
    operator.cli("update-member", "other", "--burst", "10", "--messages-per-minute", "60")
    operator.cli("publish")
    target = next(p for p in (operator.public / "targets").iterdir() if p.read_bytes() == (operator.repo_dir / "registry.json").read_bytes())
    target.write_text(json.dumps(evil_registry(operator)))
    assert_refused(member_box, "length or hash mismatch")


def test_bad_signature_is_refused(member_box: Box, operator: Operator) -> None:
    # The attacker holds the online snapshot and timestamp keys but not the targets keys.
    attacker.forge_release(operator.public, evil_registry(operator), [CryptoSigner.generate_ed25519()],
                           attacker.keys(operator.keys_dir, "snapshot"), attacker.keys(operator.keys_dir, "timestamp"))
    assert_refused(member_box, "signature check failed")


def test_fewer_signatures_than_threshold_are_refused(member_box: Box, operator: Operator) -> None:
    one_of_two = attacker.keys(operator.keys_dir, "targets")[:1]
    attacker.forge_release(operator.public, evil_registry(operator), one_of_two,
                           attacker.keys(operator.keys_dir, "snapshot"), attacker.keys(operator.keys_dir, "timestamp"))
    err = assert_refused(member_box, "signature check failed")
    assert "1/2" in err or "threshold" in err.lower()


def test_rollback_to_an_older_version_is_refused(member_box: Box, operator: Operator) -> None:
    old = attacker.snapshot_files(operator.public)
    operator.cli("suspend", "other")
    operator.cli("publish")
    assert sync(member_box).returncode == 0
    assert "suspended" in trusted(member_box)[0].decode()
    # Replay the previous, validly signed and unexpired release (other still active).
    attacker.restore(operator.public, old, ["metadata/timestamp.json", "metadata/snapshot.json", "metadata/targets.json"])
    assert_refused(member_box, "version check failed")
    assert json.loads(trusted(member_box)[0])["members"][1]["status"] == "suspended"


def test_freeze_with_an_expired_timestamp_is_refused(member_box: Box, operator: Operator) -> None:
    # A release signed long ago (other suspended then), replayed after its timestamp ran out.
    OperatorRepo(operator.repo_dir).set_status("other", "suspended")
    OperatorRepo(operator.repo_dir).publish(now=dt.datetime.now(dt.UTC) - dt.timedelta(days=20))
    assert_refused(member_box, "expired")


def test_mix_and_match_snapshot_is_refused(member_box: Box, operator: Operator) -> None:
    operator.cli("suspend", "other")
    operator.cli("publish")
    operator.cli("reactivate", "other")
    operator.cli("publish")
    meta = operator.public / "metadata"
    newest = attacker.load(operator.public, "targets.json").signed.version
    # Current timestamp and snapshot, but the targets of the release before.
    (meta / f"{newest}.targets.json").write_bytes((meta / f"{newest - 1}.targets.json").read_bytes())
    assert_refused(member_box, "mismatch")


def test_oversized_files_are_refused(member_box: Box, operator: Operator) -> None:
    meta = operator.public / "metadata"
    good = (meta / "timestamp.json").read_bytes()
    # Endless data: a timestamp padded far past any sane size.
    (meta / "timestamp.json").write_bytes(good[:-2] + b" " * 2_000_000 + good[-2:])
    assert_refused(member_box, "larger than allowed")
    (meta / "timestamp.json").write_bytes(good)
    operator.cli("suspend", "other")
    operator.cli("publish")
    target = next(p for p in (operator.public / "targets").iterdir() if p.read_bytes() == (operator.repo_dir / "registry.json").read_bytes())
    with target.open("ab") as fh:
        fh.write(b" " * 1_000_000)
    assert_refused(member_box, "larger than allowed")


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


def test_root_rotation_below_the_old_threshold_is_refused(member_box: Box, operator: Operator) -> None:
    # The attacker stole one of the three root keys (threshold 2) and tries to take the root role over.
    stolen = attacker.keys(operator.keys_dir, "root")[:1]
    mine = CryptoSigner.generate_ed25519()
    attacker.forge_root(operator.public, [*stolen, mine], mine)
    assert_refused(member_box, "signature check failed")
    tuf = member_box.cfg.registry_dir / "tuf"
    assert attacker.Metadata.from_file(str(tuf / "root.json")).signed.version == 1
    # The legitimate operator is unaffected once the forged root is gone.
    (operator.public / "metadata" / "2.root.json").unlink()
    operator.cli("suspend", "other")
    operator.cli("publish")
    assert sync(member_box).returncode == 0


def test_repeated_refusals_raise_the_alarm_in_status(member_box: Box, operator: Operator) -> None:
    version = trusted(member_box)[1]["version"]
    attacker.forge_release(operator.public, evil_registry(operator), [CryptoSigner.generate_ed25519()],
                           attacker.keys(operator.keys_dir, "snapshot"), attacker.keys(operator.keys_dir, "timestamp"))
    for _ in range(member_box.cfg.registry.alarm_after_failures):
        assert sync(member_box).returncode == 1
    reg = member_box.status()["registry"]
    assert reg["consecutive_failures"] == 3
    assert "failed 3 times" in reg["alarm"] and "signature" in reg["alarm"]
    assert reg["version"] == version and reg["members"] == 2
    metrics = (member_box.cfg.registry_dir / "metrics.prom").read_text()
    assert "appliance_registry_alarm 1.0" in metrics
