"""What an attacker between a box and the registry can do: rewrite, replay and re-sign files.

Built on python-tuf's Metadata API (an attacker with some of the keys signs
exactly as the operator would); the box must still refuse every result.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, MetaFile, Snapshot, TargetFile, Targets, Timestamp
from tuf.api.serialization.json import JSONSerializer

SER = JSONSerializer(compact=False)


def keys(keys_dir: Path, role: str) -> list[CryptoSigner]:
    """The operator's private keys for ROLE (by file name), as an attacker who stole them would use them."""
    return [CryptoSigner(load_pem_private_key(f.read_bytes(), None)) for f in sorted(keys_dir.glob(f"{role}-*.key"))]


def snapshot_files(public: Path) -> dict[str, bytes]:
    """Every published file, to replay later."""
    return {str(p.relative_to(public)): p.read_bytes() for p in public.rglob("*") if p.is_file()}


def restore(public: Path, files: dict[str, bytes], only: list[str]) -> None:
    for name in only:
        (public / name).write_bytes(files[name])


def load(public: Path, name: str) -> Metadata[Any]:
    return Metadata.from_file(str(public / "metadata" / name))


def write(public: Path, md: Metadata[Any], *names: str) -> bytes:
    data = md.to_bytes(SER)
    for n in names:
        (public / "metadata" / n).write_bytes(data)
    return data


def sign(md: Metadata[Any], signers: list[CryptoSigner]) -> Metadata[Any]:
    md.signatures.clear()
    for s in signers:
        md.sign(s, append=True)
    return md


def forge_release(public: Path, registry: dict[str, Any], targets_signers: list[CryptoSigner],
                  snapshot_signers: list[CryptoSigner], timestamp_signers: list[CryptoSigner]) -> None:
    """Publish REGISTRY as the next versions, signed with whatever keys the attacker holds."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    body = json.dumps(registry).encode()
    tf = TargetFile.from_data("registry.json", body, ["sha256"])
    (public / "targets" / f"{tf.hashes['sha256']}.registry.json").write_bytes(body)
    old_tg, old_sn, old_ts = load(public, "targets.json"), load(public, "snapshot.json"), load(public, "timestamp.json")
    tg = Targets(version=old_tg.signed.version + 1, expires=now + dt.timedelta(days=30))
    tg.targets["registry.json"] = tf
    tg_bytes = write(public, sign(Metadata(tg), targets_signers), f"{tg.version}.targets.json", "targets.json")
    sn = Snapshot(version=old_sn.signed.version + 1, expires=now + dt.timedelta(days=7))
    sn.meta["targets.json"] = MetaFile(tg.version, len(tg_bytes), {"sha256": hashlib.sha256(tg_bytes).hexdigest()})
    sn_bytes = write(public, sign(Metadata(sn), snapshot_signers), f"{sn.version}.snapshot.json", "snapshot.json")
    ts = Timestamp(version=old_ts.signed.version + 1, expires=now + dt.timedelta(days=7),
                   snapshot_meta=MetaFile(sn.version, len(sn_bytes), {"sha256": hashlib.sha256(sn_bytes).hexdigest()}))
    write(public, sign(Metadata(ts), timestamp_signers), "timestamp.json")


def forge_root(public: Path, signers: list[CryptoSigner], add_root_key: CryptoSigner, threshold: int = 1) -> None:
    """Publish the next root version giving ADD_ROOT_KEY control of the root role."""
    old = load(public, "root.json")
    new = copy.deepcopy(old.signed)
    for keyid in list(new.roles["root"].keyids):
        new.revoke_key(keyid, "root")
    new.add_key(add_root_key.public_key, "root")
    new.roles["root"].threshold = threshold
    new.version = old.signed.version + 1
    write(public, sign(Metadata(new), signers), f"{new.version}.root.json", "root.json")


def copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, dirs_exist_ok=True)
