"""An account's mail store: INBOX plus Maildir++ folders, subscriptions, special uses.

INBOX is MAIL_DIR/DOMAIN/LOCAL/ itself; a folder ``Sent`` is ``.Sent/`` and a
child ``Lists.Work`` is ``.Lists.Work/`` (Maildir++; the hierarchy delimiter is
``.``, as in Dovecot's Maildir++ layout). Folder objects are shared by every
session of the process (one per path), each session keeping its own view.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from appliance.mailstore.folder import Folder, MailstoreError
from appliance.mailstore.paths import maildir_path

__all__ = ["Folder", "Mailstore", "MailstoreError", "maildir_path"]

DELIMITER = "."
SUBSCRIPTIONS = "subscriptions"
# RFC 6154 attributes for the conventional names of special folders.
SPECIAL_USE = {"sent": "\\Sent", "drafts": "\\Drafts", "trash": "\\Trash", "junk": "\\Junk", "spam": "\\Junk",
               "archive": "\\Archive"}

_folders: dict[Path, Folder] = {}


def _make(path: Path) -> None:
    for sub in ("tmp", "new", "cur"):
        (path / sub).mkdir(parents=True, exist_ok=True)


def check_name(name: str) -> str:
    """NAME as a folder name (INBOX case-folded), or MailstoreError saying why not."""
    if name.upper() == "INBOX":
        return "INBOX"
    if not name or name.startswith(DELIMITER) or name.endswith(DELIMITER) or DELIMITER * 2 in name:
        raise MailstoreError(f"invalid mailbox name {name!r}")
    if any(c in name for c in "/\\\r\n\0*%") or name.startswith("~"):
        raise MailstoreError(f"invalid mailbox name {name!r}: / \\ * % and control characters are not allowed")
    if name.upper().startswith("INBOX" + DELIMITER):
        raise MailstoreError("INBOX cannot have children here")
    return name


class Mailstore:
    def __init__(self, root: Path, special_folders: list[str] | tuple[str, ...] = (), outbox: str = "") -> None:
        self.root = Path(root)
        self.special = list(special_folders)
        self.outbox = outbox

    def ensure(self) -> None:
        """Create INBOX, the special folders and the Outbox, subscribed (idempotent)."""
        created = not (self.root / SUBSCRIPTIONS).exists()
        _make(self.root)
        subs = self.subscriptions()
        for name in ["INBOX", *self.special, *([self.outbox] if self.outbox else [])]:
            path = self._path(name)
            if not (path / "cur").is_dir() or created:
                # Subscribe what is new; a user's later UNSUBSCRIBE is not undone at the next login.
                _make(path)
                subs.add(name)
        if subs != self.subscriptions() or created:
            self._write_subscriptions(subs)

    def _path(self, name: str) -> Path:
        name = check_name(name)
        return self.root if name == "INBOX" else self.root / (DELIMITER + name)

    def exists(self, name: str) -> bool:
        try:
            return (self._path(name) / "cur").is_dir()
        except MailstoreError:
            return False

    def folder(self, name: str) -> Folder | None:
        try:
            path = self._path(name)
        except MailstoreError:
            return None
        if not (path / "cur").is_dir():
            _folders.pop(path, None)
            return None
        f = _folders.get(path)
        if f is None:
            f = _folders[path] = Folder(path, check_name(name))
        return f

    def names(self) -> list[str]:
        out = ["INBOX"]
        for entry in sorted(os.listdir(self.root)):
            if entry.startswith(DELIMITER) and entry not in (".", "..") and (self.root / entry / "cur").is_dir():
                out.append(entry[1:])
        return out

    def attributes(self, name: str) -> list[str]:
        attrs = []
        names = self.names()
        prefix = name + DELIMITER
        attrs.append("\\HasChildren" if any(n.startswith(prefix) for n in names) else "\\HasNoChildren")
        if name != "INBOX" and name.lower() in SPECIAL_USE and name in self.special:
            attrs.append(SPECIAL_USE[name.lower()])
        return attrs

    def create(self, name: str) -> None:
        name = check_name(name.rstrip(DELIMITER))
        if self.exists(name):
            raise MailstoreError(f"[ALREADYEXISTS] mailbox {name} already exists")
        _make(self._path(name))

    def delete(self, name: str) -> None:
        name = check_name(name)
        if name == "INBOX":
            raise MailstoreError("INBOX cannot be deleted")
        path = self._path(name)
        if not path.is_dir():
            raise MailstoreError(f"no mailbox {name}")
        f = _folders.pop(path, None)
        if f is not None:
            f.close()
        shutil.rmtree(path)
        subs = self.subscriptions()
        subs.discard(name)
        self._write_subscriptions(subs)

    def rename(self, old: str, new: str) -> None:
        old, new = check_name(old), check_name(new)
        if old == "INBOX" or new == "INBOX":
            raise MailstoreError("INBOX cannot be renamed here")
        if not self.exists(old):
            raise MailstoreError(f"no mailbox {old}")
        if self.exists(new):
            raise MailstoreError(f"[ALREADYEXISTS] mailbox {new} already exists")
        # Children move with their parent (RFC 3501 6.3.5).
        for n in self.names():
            if n == old or n.startswith(old + DELIMITER):
                src, dst = self._path(n), self._path(new + n[len(old):])
                f = _folders.pop(src, None)
                if f is not None:
                    f.close()
                os.rename(src, dst)

    def subscriptions(self) -> set[str]:
        try:
            return {line for line in (self.root / SUBSCRIPTIONS).read_text().splitlines() if line}
        except FileNotFoundError:
            return set()

    def _write_subscriptions(self, subs: set[str]) -> None:
        tmp = self.root / (SUBSCRIPTIONS + ".tmp")
        tmp.write_text("".join(f"{s}\n" for s in sorted(subs)))
        os.replace(tmp, self.root / SUBSCRIPTIONS)

    def subscribe(self, name: str, on: bool = True) -> None:
        name = check_name(name)
        subs = self.subscriptions()
        if on:
            subs.add(name)
        else:
            subs.discard(name)
        self._write_subscriptions(subs)
