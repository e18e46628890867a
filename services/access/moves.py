"""The access service's move socket (`run_dir/access-moves.sock`, mode 0600): `appliance user move`
holds an account here so that no session on this box writes its Maildir while it is copied.

Why a socket and not Redis or a column: every session that can write an account's Maildir lives
on its home box (the other boxes proxy to it), and the move needs an answer saying each of them
has ended. The protocol, one line each way:

    HOLD ADDRESS [SECONDS]  ->  OK N          N sessions ended (IMAP: BYE [UNAVAILABLE], POP3:
                                              -ERR [SYS/TEMP], closed without UPDATE)
                            ->  ERR TEXT      a command still running after SECONDS (default 60):
                                              the hold is dropped, the move must stop
    CHECK ADDRESS           ->  OK HELD       the hold is still this connection's
    RELEASE ADDRESS         ->  OK

The hold lasts as long as the connection: a move that crashes releases it, and a restarted access
service (whose holds are gone) shows up to the move as a closed connection at its CHECK.
While held, new logins for the account are answered like a busy server (IMAP `NO [UNAVAILABLE]`,
POP3 `-ERR [SYS/TEMP]`); other accounts are served as usual.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

from twisted.internet import defer, reactor, task
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineReceiver

SOCKET_NAME = "access-moves.sock"
DEFAULT_WAIT = 60.0
MAX_WAIT = 600.0
POLL = 0.05
HELD_TEXT = "Mailbox is being moved, try again in a minute"


class MoveSession(Protocol):
    def move_end(self, text: str) -> None:
        """End the session now, or once its running command has finished."""

    def move_ended(self) -> bool:
        """Nothing more of this session can touch the Maildir."""


class Registry:
    """The logged-in local sessions per account, and the accounts held by a move (reactor thread only)."""

    def __init__(self) -> None:
        self.sessions: dict[str, set[MoveSession]] = {}
        self.holders: dict[str, Any] = {}

    def join(self, address: str, session: MoveSession) -> None:
        self.sessions.setdefault(address, set()).add(session)

    def leave(self, address: str, session: MoveSession) -> None:
        live = self.sessions.get(address)
        if live is not None:
            live.discard(session)
            if not live:
                del self.sessions[address]

    def held(self, address: str) -> bool:
        return address in self.holders

    def hold(self, address: str, holder: Any) -> bool:
        if self.holders.get(address, holder) is not holder:
            return False
        self.holders[address] = holder
        return True

    def release(self, address: str, holder: Any) -> None:
        if self.holders.get(address) is holder:
            del self.holders[address]

    async def end_sessions(self, address: str, wait: float) -> int | None:
        """End every session of ADDRESS; their number, or None if some still run after WAIT seconds."""
        sessions = list(self.sessions.get(address, ()))
        for s in sessions:
            s.move_end(HELD_TEXT)
        deadline = reactor.seconds() + wait  # type: ignore[attr-defined]
        while not all(s.move_ended() for s in sessions):
            if reactor.seconds() >= deadline:  # type: ignore[attr-defined]
                return None
            await task.deferLater(reactor, POLL, lambda: None)  # type: ignore[arg-type]
        return len(sessions)


REGISTRY = Registry()


class MoveControl(LineReceiver):
    delimiter = b"\n"
    MAX_LENGTH = 1024

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.holds: set[str] = set()

    def lineReceived(self, line: bytes) -> None:
        parts = line.decode("utf-8", "replace").split()
        verb = parts[0].upper() if parts else ""
        if verb == "HOLD" and len(parts) in (2, 3):
            try:
                wait = min(max(float(parts[2]), 0.0), MAX_WAIT) if len(parts) == 3 else DEFAULT_WAIT
            except ValueError:
                self._reply("ERR bad SECONDS")
                return
            d = defer.ensureDeferred(self._hold(parts[1], wait))
            d.addErrback(lambda f: self._reply(f"ERR {f.getErrorMessage()}"))
        elif verb == "CHECK" and len(parts) == 2:
            mine = parts[1] in self.holds and self.registry.holders.get(parts[1]) is self
            self._reply("OK HELD" if mine else "ERR not held")
        elif verb == "RELEASE" and len(parts) == 2:
            self.registry.release(parts[1], self)
            self.holds.discard(parts[1])
            self._reply("OK")
        else:
            self._reply("ERR unknown command")

    async def _hold(self, address: str, wait: float) -> None:
        if not self.registry.hold(address, self):
            self._reply("ERR already held by another move")
            return
        self.holds.add(address)
        ended = await self.registry.end_sessions(address, wait)
        if ended is None:
            self.registry.release(address, self)
            self.holds.discard(address)
            self._reply(f"ERR a command of {address} still runs after {wait:g} s: not held")
            return
        self._reply(f"OK {ended}")

    def _reply(self, text: str) -> None:
        if self.transport is not None and self.connected:
            self.sendLine(text.encode())

    def connectionLost(self, reason: Any = None) -> None:
        for address in self.holds:
            self.registry.release(address, self)  # a move that went away (or crashed) ends its hold
        self.holds.clear()


def listen(run_dir: str, registry: Registry = REGISTRY) -> Any:
    """Listen on RUN_DIR/access-moves.sock, for the local operator (the move runs as root or the service's user)."""
    path = Path(run_dir) / SOCKET_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_socket():
        os.unlink(path)  # left by a previous run: nobody listens there any more
    factory = Factory.forProtocol(lambda: MoveControl(registry))
    factory.noisy = False
    return reactor.listenUNIX(str(path), factory, mode=0o600)  # type: ignore[attr-defined]
