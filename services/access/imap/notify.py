"""Change notification between sessions, driven by inotify (issue 13 item 2: no polling).

One ``Hub`` per process, keyed by (account root, mailbox name). A session joins when
it selects a mailbox and leaves when it unselects or disconnects. While anyone has a
mailbox selected its ``new/`` and ``cur/`` are watched (refcounted): the relay's
delivery into ``new/`` (or another Maildir tool, or POP in this process) raises an
inotify event; the hub runs ``Mailbox.sync()`` in the store pool and then tells every
session with the mailbox selected. A session's own STORE/APPEND/EXPUNGE/COPY tells the
others through ``changed()`` directly (keyword changes live only in the index, so no
file event would carry them). An idle session costs nothing: no timer, no poll.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

from twisted.internet import inotify, reactor
from twisted.python import filepath, log

from services.access.imap import storeio

Key = tuple[str, str]
# Events that mean "a message appeared, vanished or changed its flags" in a Maildir
# directory: delivery renames tmp/ -> new/, flag changes rename within cur/.
MASK = inotify.IN_MOVED_TO | inotify.IN_MOVED_FROM | inotify.IN_CREATE | inotify.IN_DELETE
# Coalesce a burst of events (a delivery is several) into one sync.
DEBOUNCE_SECONDS = 0.02


class Listener(Protocol):
    def mailbox_changed(self) -> None: ...


class _Watched:
    def __init__(self, mailbox: Any) -> None:
        self.mailbox = mailbox
        self.sessions: set[Listener] = set()
        self.paths: list[filepath.FilePath[str]] = []
        self.pending = False


class Hub:
    def __init__(self) -> None:
        self._boxes: dict[Key, _Watched] = {}
        self._by_path: dict[str, Key] = {}
        self._notifier: inotify.INotify | None = None

    def _inotify(self) -> inotify.INotify | None:
        if self._notifier is None:
            try:
                self._notifier = inotify.INotify()
                self._notifier.startReading()
            except Exception as exc:  # no inotify (not Linux): sessions still see changes at NOOP
                log.msg(f"imap: inotify unavailable ({exc}); changes are seen at the next command")
                return None
        return self._notifier

    def join(self, key: Key, mailbox: Any, session: Listener) -> None:
        box = self._boxes.get(key)
        if box is None:
            box = self._boxes[key] = _Watched(mailbox)
            notifier = self._inotify()
            for d in getattr(mailbox, "watch_dirs", []):
                fp = filepath.FilePath(str(d))
                try:
                    if notifier is not None:
                        notifier.watch(fp, mask=MASK, callbacks=[self._event])
                        box.paths.append(fp)
                        self._by_path[os.fsdecode(fp.path)] = key
                except Exception as exc:
                    log.msg(f"imap: cannot watch {d}: {exc}")
        box.mailbox = mailbox
        box.sessions.add(session)

    def leave(self, key: Key, session: Listener) -> None:
        box = self._boxes.get(key)
        if box is None:
            return
        box.sessions.discard(session)
        if box.sessions:
            return
        del self._boxes[key]
        for fp in box.paths:
            self._by_path.pop(os.fsdecode(fp.path), None)
            if self._notifier is not None:
                try:
                    self._notifier.ignore(fp)
                except KeyError:
                    pass

    def watching(self) -> int:
        return len(self._boxes)

    def changed(self, key: Key, source: Listener | None = None) -> None:
        """Tell every session on KEY but SOURCE that the mailbox changed."""
        box = self._boxes.get(key)
        if box is None:
            return
        for s in list(box.sessions):
            if s is not source:
                s.mailbox_changed()

    def _event(self, _watch: Any, path: filepath.FilePath[str], _mask: int) -> None:
        # inotify hands back bytes paths; the keys are text.
        key = self._by_path.get(os.fsdecode(path.parent().path))
        box = self._boxes.get(key) if key else None
        if key is None or box is None or box.pending:
            return
        box.pending = True
        reactor.callLater(DEBOUNCE_SECONDS, self._sync, key)  # type: ignore[attr-defined]

    def _sync(self, key: Key) -> None:
        box = self._boxes.get(key)
        if box is None:
            return
        box.pending = False
        d = storeio.run(box.mailbox.sync)

        def synced(_: Any) -> None:
            self.changed(key)

        d.addCallback(synced)
        d.addErrback(lambda f: log.err(f, f"imap: sync of {key[1]} failed"))


HUB = Hub()


def key_of(root: Path | str, mailbox: str) -> Key:
    return (str(root), mailbox)


__all__: list[str] = ["HUB", "Hub", "Key", "key_of"]
