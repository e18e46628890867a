"""`appliance user move ADDRESS BOX --ssh [USER@]HOST[:PORT]`: the Maildir goes to the target box
over SSH with rsync (docs/fleet.md, "Between machines").

The target side is meant to be restricted by rrsync in the target's `authorized_keys`
(``command="rrsync /var/mail/appliance",restrict``), so every remote path here is relative to the
target's mail directory, and the key can read and write that directory and nothing else.

What goes how:
- the message files: ``rsync -rlptH`` (names kept: the UIDs are in them; mtimes kept: they are the
  INTERNALDATE), ``--delete`` so the final pass mirrors expunges, flag renames
  and deleted folders; never the owner (the receiving user, the target's service user, owns what
  it receives);
- the indexes (SQLite): never rsynced live (a copy of a database being written can be torn); each
  is snapshotted with SQLite's backup API into a local temporary tree, which is then sent;
- the late arrivals (mail the relay delivered here after the final pass): staged under their
  stem in their folder's new/ and sent with ``--ignore-existing``.

ssh runs with ``BatchMode=yes`` (no prompt: a missing key fails at once), the operator's
known_hosts file only and ``StrictHostKeyChecking=yes`` (an unknown or changed host key is a
refusal, never a question and never accepted blindly). Every failure raises MoveError with the
tail of ssh's and rsync's stderr.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from appliance import hostport
from appliance.homemove import INDEX_SUFFIXES, Copied, MoveError, _backup, late_arrivals, late_target, message_files

_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,31}")
STDERR_TAIL = 800  # characters of ssh's/rsync's stderr quoted in an error
RSYNC_TIMEOUT = 3600.0  # one rsync run; a dead connection is found sooner by ServerAlive
_EXCLUDE_INDEX = [f"--exclude=*{suffix}" for suffix in INDEX_SUFFIXES]


@dataclass(frozen=True)
class SshTarget:
    user: str
    host: str
    port: int
    known_hosts: Path
    identity: Path | None = None

    @classmethod
    def parse(cls, value: str, known_hosts: str | None, identity: str | None) -> SshTarget:
        """--ssh [USER@]HOST[:PORT] with --known-hosts FILE (required) and --ssh-key FILE; ValueError naming the option."""
        user, at, rest = value.rpartition("@")
        if at and not _USER.fullmatch(user):
            raise ValueError(f"--ssh {value!r}: {user!r} is not a user name")
        host, port = hostport.parse(rest, "--ssh", default_port=22)
        if not known_hosts:
            raise ValueError("--ssh needs --known-hosts FILE: the target's host key, as `ssh-keyscan -p PORT HOST` "
                             "prints it and you have checked (host keys are never accepted unseen)")
        kh = Path(known_hosts)
        if not kh.is_file() or kh.stat().st_size == 0:
            raise ValueError(f"--known-hosts {known_hosts}: no such file, or empty")
        ident = Path(identity) if identity else None
        if ident is not None and not ident.is_file():
            raise ValueError(f"--ssh-key {identity}: no such file")
        return cls(user, host, port, kh, ident)

    def ssh_command(self) -> list[str]:
        cmd = ["ssh", "-p", str(self.port),
               "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
               "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
               "-o", "UpdateHostKeys=no", "-o", "ConnectTimeout=10",
               "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4"]
        if self.identity is not None:
            cmd += ["-i", str(self.identity), "-o", "IdentitiesOnly=yes"]
        if self.user:
            cmd += ["-l", self.user]
        return cmd

    def remote(self, rel: str) -> str:
        """rsync's HOST:PATH for PATH relative to the target's mail directory (rrsync's root)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{rel}"

    def __str__(self) -> str:
        return (f"{self.user}@" if self.user else "") + f"{self.host}:{self.port}"


# rsync(1), EXIT VALUES: said beside the code, because rsync's own message can be lost (a receiver
# that dies on a full disk may exit before its error reaches this side: exit 11, empty stderr).
RSYNC_EXITS = {
    1: "syntax or usage error", 2: "protocol incompatibility", 3: "errors selecting input/output files, dirs",
    5: "error starting client-server protocol", 10: "error in socket I/O", 11: "error in file I/O "
    "(on the target: a full disk, or no permission?)", 12: "error in rsync protocol data stream",
    20: "received SIGUSR1 or SIGINT", 22: "error allocating core memory buffers",
    23: "partial transfer due to error", 30: "timeout in data send/receive", 255: "ssh failed",
}


def _exit_text(code: int) -> str:
    meaning = RSYNC_EXITS.get(code)
    return f"rsync exit {code}" + (f", {meaning}" if meaning else "")


def _tail(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= STDERR_TAIL else "..." + text[-STDERR_TAIL:]


class RemoteMaildir:
    """The account's Maildir on the target box: REL, a path under the target's mail directory."""

    def __init__(self, target: SshTarget, rel: str) -> None:
        self.target = target
        self.rel = rel.strip("/")

    def describe(self) -> str:
        return f"{self.target.remote(self.rel)} (port {self.target.port})"

    def _rsync(self, *args: str, what: str) -> subprocess.CompletedProcess[str]:
        # The -e string is split by rsync itself (spaces, quotes), so each word is quoted.
        cmd = ["rsync", "-e", " ".join(shlex.quote(w) for w in self.target.ssh_command()), *args]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=RSYNC_TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise MoveError(f"{what} to {self.describe()}: {exc}") from None
        # 24: files vanished while rsync listed them (a flag change renames a message file while
        # the first copy runs); the final copy under the hold sees the new names.
        if r.returncode not in (0, 24):
            raise MoveError(f"{what} to {self.describe()} failed ({_exit_text(r.returncode)}): "
                            f"{_tail(r.stderr) or 'rsync said nothing more'}")
        return r

    def check_empty(self) -> None:
        """Refuse a target Maildir that exists and holds anything (never overwrite a mailbox there);
        this is also the first contact, so a bad host key or key is reported before anything is sent."""
        cmd = ["rsync", "-e", " ".join(shlex.quote(w) for w in self.target.ssh_command()),
               "--list-only", self.target.remote(self.rel + "/")]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise MoveError(f"cannot reach {self.describe()}: {exc}") from None
        if r.returncode in (12, 23) and "No such file or directory" in r.stderr:
            return  # nothing there yet, the usual case (rrsync says so itself: exit 12; plain rsync: 23)
        if r.returncode != 0:
            raise MoveError(f"cannot reach {self.describe()} ({_exit_text(r.returncode)}): "
                            f"{_tail(r.stderr) or 'rsync said nothing more'}")
        entries = [line for line in r.stdout.splitlines() if line.strip() and not line.rstrip().endswith(" .")]
        if entries:
            raise MoveError(f"{self.describe()}: exists and is not empty: nothing copied "
                            "(remove it on the target or pick another box)")

    def sync(self, src: Path) -> Copied:
        """Make the target the same as SRC: the message files (rsync, --delete), then a snapshot of
        every index. The first copy and the final one under the hold are both this."""
        if not (src / "cur").is_dir():
            raise MoveError(f"{src}: no Maildir there (is this the account's home box?)")
        out = Copied()
        before = message_files(src)  # every file here now is in this pass (only the relay adds, under the hold)
        # --delete leaves the excluded index alone on the target: the snapshot below replaces it by
        # rsync's delta, and the target never lacks one. (The index is one file at the Maildir's
        # root, so a folder deleted here has nothing excluded in it and is deleted there.)
        r = self._rsync("-rlptH", "--delete", "--mkpath", "--exclude=tmp/*", *_EXCLUDE_INDEX,
                        "--out-format=%n\t%l", f"{src}/", self.target.remote(self.rel + "/"),
                        what="copying the message files")
        out.seen = set(before)
        for line in r.stdout.splitlines():
            name, _, size = line.rpartition("\t")
            if name and not name.endswith("/") and size.isdigit():
                out.files += 1
                out.bytes += int(size)
                out.seen.add(name)  # arrived after the listing above, sent all the same
        with tempfile.TemporaryDirectory(prefix="appliance-move-") as tmp:
            for root, _dirs, files in os.walk(src):
                for name in files:
                    if name.endswith(".sqlite"):
                        rel = Path(root).relative_to(src)
                        (Path(tmp) / rel).mkdir(parents=True, exist_ok=True)
                        _backup(Path(root) / name, Path(tmp) / rel / name)
                        os.chmod(Path(tmp) / rel / name, (Path(root) / name).stat().st_mode & 0o7777)
                        out.indexes += 1
            if out.indexes:
                # No -p and no directory times: the directories there are the Maildir's own, sent above.
                self._rsync("-rlt", "--omit-dir-times", "--mkpath", f"{tmp}/", self.target.remote(self.rel + "/"),
                            what="copying the index snapshot")
        return out

    def catch_up(self, src: Path, seen: set[str]) -> int:
        """Send every message file of SRC not in SEEN into its folder's new/ on the target (adding it to SEEN)."""
        late = late_arrivals(src, seen)
        if not late:
            return 0
        with tempfile.TemporaryDirectory(prefix="appliance-late-") as tmp:
            staged = []
            for rel in late:
                target = Path(tmp) / late_target(rel)
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    shutil.copy2(src / rel, target)
                except FileNotFoundError:
                    continue
                staged.append(rel)
            if staged:
                self._rsync("-rlt", "--omit-dir-times", "--ignore-existing", "--mkpath", f"{tmp}/", self.target.remote(self.rel + "/"),
                            what="copying the mail delivered during the move")
        seen.update(staged)
        return len(staged)

    def first_copy(self, src: Path) -> Copied:
        self.check_empty()
        return self.sync(src)
