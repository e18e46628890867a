"""The consortium operator's side: a TUF repository whose one target is ``registry.json``.

Layout of an operator directory REPO_DIR::

    REPO_DIR/registry.json     the draft member list the operator edits (not published as is)
    REPO_DIR/practice.json     the code of practice (appliance/practice/code.py), published as a second target
    REPO_DIR/repo.json         settings: where the keys are, how long each role's metadata lives
    REPO_DIR/public/           the published tree; serve it with any static web server
        metadata/N.root.json root.json timestamp.json N.snapshot.json N.targets.json
        targets/SHA256.registry.json
    KEYS_DIR/ROLE-KEYID.key    Ed25519 private keys, one per file, mode 0600 (default REPO_DIR/keys;
                               never inside public/)

Every signature, threshold, expiry and version is produced and checked with
python-tuf's Metadata API and securesystemslib signers; nothing here signs or
verifies by hand. ``publish`` validates the draft with ``model.parse`` first, so
a registry with an address in two members is never signed.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner, Signer
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, TargetFile, Targets, Timestamp
from tuf.api.serialization.json import JSONSerializer

from appliance import fsutil
from appliance.practice import code as practice_code
from appliance.registry import model

TARGET_NAME = "registry.json"
ROLES = ("root", "targets", "snapshot", "timestamp")
# Days each role's metadata stays valid after it is signed. The box treats the
# registry as expired at the earliest of them, so the operator must publish
# again before the shortest one runs out (see docs/registry.md).
DEFAULT_EXPIRY_DAYS = {"root": 365, "targets": 30, "snapshot": 7, "timestamp": 7}
DEFAULT_KEYS = {"root": 3, "targets": 1, "snapshot": 1, "timestamp": 1}
DEFAULT_THRESHOLDS = {"root": 2, "targets": 1, "snapshot": 1, "timestamp": 1}
_SERIALIZER = JSONSerializer(compact=False)


class RepoError(Exception):
    """An operator command that cannot be carried out; the message says why in one line."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write PATH so that readers see the old or the new file, never half of one (MODE from creation)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fsutil.atomic_write(path, data, mode=mode)


def write_private_key(keys_dir: Path, role: str, signer: CryptoSigner) -> Path:
    # The directory first (0700), then the key created 0600: never readable by others, not even
    # between creation and rename (appliance.fsutil).
    fsutil.make_private_dir(keys_dir)
    path = keys_dir / f"{role}-{signer.public_key.keyid[:16]}.key"
    fsutil.atomic_write(path, signer.private_bytes, mode=0o600)
    return path


def load_signers(keys_dirs: Iterable[Path]) -> dict[str, Signer]:
    """Every private key found in KEYS_DIRS, by key id."""
    out: dict[str, Signer] = {}
    for d in keys_dirs:
        if not d.is_dir():
            continue
        for f in sorted(d.glob("*.key")):
            if f.stat().st_mode & 0o077:
                raise RepoError(f"{f}: private key readable by others (chmod 600 it)")
            try:
                key = load_pem_private_key(f.read_bytes(), password=None)
                signer = CryptoSigner(key)
            except (ValueError, TypeError) as exc:
                raise RepoError(f"{f}: not an unencrypted PEM private key: {exc}") from None
            out[signer.public_key.keyid] = signer
    return out


@dataclass
class Published:
    root: int
    targets: int
    snapshot: int
    timestamp: int
    expires: dt.datetime


class OperatorRepo:
    """One operator directory (see the module docstring)."""

    def __init__(self, repo_dir: str | Path, keys_dirs: list[Path] | None = None) -> None:
        self.dir = Path(repo_dir).resolve()
        self.settings_file = self.dir / "repo.json"
        if not self.settings_file.exists():
            raise RepoError(f"{self.dir}: not a registry repository (run `appliance registry init {repo_dir}`)")
        self.settings: dict[str, Any] = json.loads(self.settings_file.read_text())
        self.keys_dirs = keys_dirs or [Path(self.settings["keys_dir"])]

    # --- paths ---------------------------------------------------------------------------

    @property
    def draft_path(self) -> Path:
        return self.dir / TARGET_NAME

    @property
    def public_dir(self) -> Path:
        return self.dir / "public"

    @property
    def metadata_dir(self) -> Path:
        return self.public_dir / "metadata"

    @property
    def targets_dir(self) -> Path:
        return self.public_dir / "targets"

    def expiry_days(self, role: str) -> int:
        return int(self.settings.get("expiry_days", {}).get(role, DEFAULT_EXPIRY_DAYS[role]))

    # --- the draft -----------------------------------------------------------------------

    def draft(self) -> dict[str, Any]:
        try:
            data = json.loads(self.draft_path.read_text())
        except (OSError, ValueError) as exc:
            raise RepoError(f"{self.draft_path}: cannot read the draft registry: {exc}") from None
        return data

    def save_draft(self, data: dict[str, Any]) -> model.Registry:
        """Validate and store the draft; a bad edit is refused and the file left as it was."""
        try:
            reg = model.parse(data)
        except model.RegistryError as exc:
            raise RepoError(f"refused: {exc}") from None
        body = (json.dumps(data, indent=2, sort_keys=False) + "\n").encode()
        if len(body) > model.MAX_REGISTRY_BYTES:
            raise RepoError(f"refused: registry larger than {model.MAX_REGISTRY_BYTES} bytes")
        write_atomic(self.draft_path, body)
        return reg

    def _find(self, data: dict[str, Any], member_id: str) -> dict[str, Any]:
        for m in data.get("members", []):
            if m.get("id") == member_id:
                return m
        raise RepoError(f"member {member_id}: no such member")

    def add_member(self, member: dict[str, Any]) -> model.Registry:
        data = self.draft()
        if any(m.get("id") == member.get("id") for m in data.get("members", [])):
            raise RepoError(f"member {member.get('id')}: already exists (use update-member)")
        data.setdefault("members", []).append(member)
        return self.save_draft(data)

    def update_member(self, member_id: str, changes: dict[str, Any]) -> model.Registry:
        data = self.draft()
        m = self._find(data, member_id)
        for k, v in changes.items():
            if v is None:
                m.pop(k, None)
            else:
                m[k] = v
        return self.save_draft(data)

    def set_status(self, member_id: str, status: str) -> model.Registry:
        return self.update_member(member_id, {"status": status})

    def remove_member(self, member_id: str) -> model.Registry:
        data = self.draft()
        self._find(data, member_id)
        data["members"] = [m for m in data["members"] if m.get("id") != member_id]
        return self.save_draft(data)

    # --- signed metadata -----------------------------------------------------------------

    def _load(self, name: str) -> Metadata[Any]:
        path = self.metadata_dir / f"{name}.json"
        try:
            return Metadata.from_file(str(path))
        except FileNotFoundError:
            raise RepoError(f"{path}: missing (was the repository initialised?)") from None

    def root(self) -> Metadata[Root]:
        return self._load("root")

    def _signers_for(self, root: Root, role: str, signers: dict[str, Signer]) -> list[Signer]:
        wanted = root.roles[role]
        have = [signers[k] for k in wanted.keyids if k in signers]
        if len(have) < wanted.threshold:
            raise RepoError(
                f"{role}: {len(have)} of the {wanted.threshold} required keys found in "
                f"{', '.join(str(d) for d in self.keys_dirs)}"
            )
        return have

    def _sign(self, md: Metadata[Any], root: Root, role: str, signers: dict[str, Signer]) -> None:
        md.signatures.clear()
        for s in self._signers_for(root, role, signers):
            md.sign(s, append=True)
        # Our own output must pass the same check the boxes make.
        try:
            root.verify_delegate(role, md.signed_bytes, md.signatures)
        except UnsignedMetadataError as exc:
            raise RepoError(f"{role}: signature check failed after signing: {exc}") from None

    def _write_md(self, md: Metadata[Any], *names: str) -> bytes:
        data = md.to_bytes(_SERIALIZER)
        for n in names:
            write_atomic(self.metadata_dir / n, data)
        return data

    def published(self) -> Published | None:
        if not (self.metadata_dir / "timestamp.json").exists():
            return None
        root, ts = self.root(), self._load("timestamp")
        snap, tg = self._load("snapshot"), self._load("targets")
        exp = min(x.signed.expires for x in (root, ts, snap, tg))
        return Published(root.signed.version, tg.signed.version, snap.signed.version, ts.signed.version, exp)

    def published_registry(self) -> dict[str, Any] | None:
        if not (self.metadata_dir / "targets.json").exists():
            return None
        tf = self._load("targets").signed.targets.get(TARGET_NAME)
        if tf is None:
            return None
        digest = tf.hashes["sha256"]
        return json.loads((self.targets_dir / f"{digest}.{TARGET_NAME}").read_bytes())

    def publish(self, now: dt.datetime | None = None, timestamp_only: bool = False) -> Published:
        """Sign the draft as the next targets version, then a new snapshot and timestamp.

        With TIMESTAMP_ONLY just re-sign the timestamp (a cron job with only the
        timestamp key online keeps the repository fresh between publications).
        """
        now = now or _now()
        signers = load_signers(self.keys_dirs)
        root_md = self.root()
        root = root_md.signed
        if root.is_expired(now):
            raise RepoError("root metadata has expired: run `appliance registry rotate-key root` to re-sign it")
        if not timestamp_only:
            body = self.draft_path.read_bytes()
            if len(body) > model.MAX_REGISTRY_BYTES:
                raise RepoError(f"refused: {self.draft_path} larger than {model.MAX_REGISTRY_BYTES} bytes")
            try:
                model.parse(json.loads(body))
            except ValueError as exc:  # RegistryError and JSON errors
                raise RepoError(f"refused: {self.draft_path}: {exc}") from None
            self._signers_for(root, "targets", signers)
            self._signers_for(root, "snapshot", signers)
            self._signers_for(root, "timestamp", signers)

            target = TargetFile.from_data(TARGET_NAME, body, ["sha256"])
            write_atomic(self.targets_dir / f"{target.hashes['sha256']}.{TARGET_NAME}", body)
            practice = self._practice_target()

            old_tg = self._load("targets").signed if (self.metadata_dir / "targets.json").exists() else None
            tg = Targets(version=(old_tg.version + 1) if old_tg else 1,
                         expires=now + dt.timedelta(days=self.expiry_days("targets")))
            tg.targets[TARGET_NAME] = target
            if practice is not None:
                tg.targets[practice_code.TARGET_NAME] = practice
            tg_md = Metadata(tg)
            self._sign(tg_md, root, "targets", signers)
            tg_bytes = self._write_md(tg_md, f"{tg.version}.targets.json", "targets.json")

            old_sn = self._load("snapshot").signed if (self.metadata_dir / "snapshot.json").exists() else None
            sn = Snapshot(version=(old_sn.version + 1) if old_sn else 1,
                          expires=now + dt.timedelta(days=self.expiry_days("snapshot")))
            # Length and hash of targets pin exactly this file (no mix-and-match).
            sn.meta["targets.json"] = MetaFile(tg.version, len(tg_bytes), {"sha256": hashlib.sha256(tg_bytes).hexdigest()})
            sn_md = Metadata(sn)
            self._sign(sn_md, root, "snapshot", signers)
            sn_bytes = self._write_md(sn_md, f"{sn.version}.snapshot.json", "snapshot.json")
        else:
            sn = self._load("snapshot").signed
            sn_bytes = (self.metadata_dir / "snapshot.json").read_bytes()

        old_ts = self._load("timestamp").signed if (self.metadata_dir / "timestamp.json").exists() else None
        ts = Timestamp(version=(old_ts.version + 1) if old_ts else 1,
                       expires=now + dt.timedelta(days=self.expiry_days("timestamp")),
                       snapshot_meta=MetaFile(sn.version, len(sn_bytes), {"sha256": hashlib.sha256(sn_bytes).hexdigest()}))
        ts_md = Metadata(ts)
        self._sign(ts_md, root, "timestamp", signers)
        # The timestamp goes last: until it is replaced, clients see the previous consistent set.
        self._write_md(ts_md, "timestamp.json")
        pub = self.published()
        assert pub is not None
        return pub

    @property
    def practice_path(self) -> Path:
        return self.dir / practice_code.TARGET_NAME

    def practice(self) -> practice_code.Code:
        """The code of practice this repository publishes (the built-in one if it has none yet)."""
        if not self.practice_path.exists():
            return practice_code.default_code()
        try:
            return practice_code.load(self.practice_path)
        except practice_code.CodeError as exc:
            raise RepoError(str(exc)) from None

    def _practice_target(self) -> TargetFile | None:
        """REPO_DIR/practice.json as a TUF target, validated first (a broken code is never signed)."""
        if not self.practice_path.exists():
            return None
        body = self.practice_path.read_bytes()
        self.practice()
        target = TargetFile.from_data(practice_code.TARGET_NAME, body, ["sha256"])
        write_atomic(self.targets_dir / f"{target.hashes['sha256']}.{practice_code.TARGET_NAME}", body)
        return target

    def rotate_key(self, role: str, keys: int | None = None, threshold: int | None = None,
                   replace: list[str] | None = None, now: dt.datetime | None = None) -> Metadata[Root]:
        """Replace ROLE's keys with fresh ones and sign the next root version.

        The new root is signed by a threshold of the old root keys and of the new
        ones, as the TUF specification (5.3.4) requires of every root a client
        accepts. REPLACE limits the rotation to those key ids (a lost or leaked
        key); otherwise every key of the role is replaced. Retired private keys
        move to KEYS_DIR/retired/. Publish afterwards.
        """
        if role not in ROLES:
            raise RepoError(f"rotate-key {role}: role must be one of {', '.join(ROLES)}")
        now = now or _now()
        signers = load_signers(self.keys_dirs)
        old_md = self.root()
        old_root = old_md.signed
        old_root_signers = self._signers_for(old_root, "root", signers)
        current = list(old_root.roles[role].keyids)
        if replace:
            unknown = [k for k in replace if not any(c.startswith(k) for c in current)]
            if unknown:
                raise RepoError(f"rotate-key {role}: no {role} key {unknown[0]}")
            retire = [c for c in current if any(c.startswith(k) for k in replace)]
        else:
            retire = current
        count = keys if keys is not None else len(retire)
        if count < 1:
            raise RepoError(f"rotate-key {role}: --keys must be at least 1")
        # A deep copy: Root.to_dict() shares the keyid lists, and the old root must stay intact to verify.
        new_root = copy.deepcopy(old_root)
        for keyid in retire:
            new_root.revoke_key(keyid, role)
        keys_dir = self.keys_dirs[0]
        new_signers: list[CryptoSigner] = []
        for _ in range(count):
            s = CryptoSigner.generate_ed25519()
            new_root.add_key(s.public_key, role)
            new_signers.append(s)
        total = len(new_root.roles[role].keyids)
        new_root.roles[role].threshold = threshold if threshold is not None else min(old_root.roles[role].threshold, total)
        if not 1 <= new_root.roles[role].threshold <= total:
            raise RepoError(f"rotate-key {role}: threshold must be 1..{total}")
        new_root.version = old_root.version + 1
        new_root.expires = now + dt.timedelta(days=self.expiry_days("root"))
        md = Metadata(new_root)
        all_signers = dict(signers)
        all_signers.update({s.public_key.keyid: s for s in new_signers})
        # Old threshold first (the client checks the new root against the one it trusts)...
        for s in old_root_signers:
            md.sign(s, append=True)
        # ...then the new root's own threshold.
        for s in self._signers_for(new_root, "root", all_signers):
            if s.public_key.keyid not in {x.public_key.keyid for x in old_root_signers}:
                md.sign(s, append=True)
        try:
            old_root.verify_delegate("root", md.signed_bytes, md.signatures)
            new_root.verify_delegate("root", md.signed_bytes, md.signatures)
        except UnsignedMetadataError as exc:
            raise RepoError(f"rotate-key {role}: new root not signed by enough keys: {exc}") from None
        # Keys are written before the metadata that names them, so a crash cannot lose them.
        for s in new_signers:
            write_private_key(keys_dir, role, s)
        self._write_md(md, f"{new_root.version}.root.json", "root.json")
        retired = keys_dir / "retired"
        for keyid in retire:
            if keyid in new_root.keys:  # still used by another role
                continue
            for f in keys_dir.glob(f"*-{keyid[:16]}.key"):
                fsutil.make_private_dir(retired)
                f.rename(retired / f.name)
        return md


def init_repo(repo_dir: str | Path, keys_dir: str | Path | None = None,
              keys: dict[str, int] | None = None, thresholds: dict[str, int] | None = None,
              expiry_days: dict[str, int] | None = None, consortium: str = "Email Service Consortium",
              code_of_practice: str = "", registry: dict[str, Any] | None = None,
              now: dt.datetime | None = None) -> OperatorRepo:
    """Create REPO_DIR: keys for every role, root version 1, an empty (or given) draft, and a first publication."""
    d = Path(repo_dir).resolve()
    if (d / "repo.json").exists():
        raise RepoError(f"{d}: already a registry repository")
    kdir = Path(keys_dir).resolve() if keys_dir else d / "keys"
    public = d / "public"
    if kdir == public or public in kdir.parents:
        raise RepoError(f"{kdir}: private keys must not live inside the published tree {public}")
    keys = {**DEFAULT_KEYS, **(keys or {})}
    thresholds = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
    for role in ROLES:
        if keys[role] < 1 or not 1 <= thresholds[role] <= keys[role]:
            raise RepoError(f"{role}: threshold {thresholds[role]} must be between 1 and the number of keys ({keys[role]})")
    expiry = {**DEFAULT_EXPIRY_DAYS, **(expiry_days or {})}
    if any(v < 1 for v in expiry.values()):
        raise RepoError("expiry days must be at least 1")
    data = registry or {"consortium": consortium, "code_of_practice": code_of_practice or practice_code.VERSION,
                        "members": []}
    try:
        model.parse(data)
    except model.RegistryError as exc:
        raise RepoError(f"refused: {exc}") from None

    now = now or _now()
    d.mkdir(parents=True, exist_ok=True)
    root = Root(expires=now + dt.timedelta(days=expiry["root"]), consistent_snapshot=True)
    signers: dict[str, Signer] = {}
    for role in ROLES:
        for _ in range(keys[role]):
            s = CryptoSigner.generate_ed25519()
            root.add_key(s.public_key, role)
            write_private_key(kdir, role, s)
            signers[s.public_key.keyid] = s
        root.roles[role].threshold = thresholds[role]
    settings = {"keys_dir": str(kdir), "expiry_days": expiry}
    write_atomic(d / "repo.json", (json.dumps(settings, indent=2) + "\n").encode())
    repo = OperatorRepo(d)
    repo.save_draft(data)
    write_atomic(repo.practice_path, (json.dumps(practice_code.default_document(), indent=2) + "\n").encode())
    md = Metadata(root)
    repo._sign(md, root, "root", signers)
    repo._write_md(md, "1.root.json", "root.json")
    repo.publish(now=now)
    return repo


def member_table(reg: dict[str, Any]) -> str:
    """A readable table of members for `appliance registry show`."""
    rows = [("ID", "STATUS", "DOMAINS", "RELAYS", "ADDRESSES", "PINS", "LIMITS (msg/min, burst, conns)")]
    for m in reg.get("members", []):
        relays = m.get("relays", [])
        lim = m.get("limits")
        rows.append((
            m.get("id", "?"),
            m.get("status", "?"),
            ",".join(m.get("domains", [])) or "-",
            ",".join(f"{r.get('host')}:{r.get('port', 25)}" for r in relays) or "-",
            ",".join(a for r in relays for a in r.get("addresses", [])) or "-",
            str(sum(len(r.get("spki_sha256", [])) for r in relays)),
            f"{lim['messages_per_minute']}, {lim['burst']}, {lim.get('connections', 20)}" if lim else "default",
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)
