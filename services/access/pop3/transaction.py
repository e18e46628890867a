"""The POP3 TRANSACTION state's commands (RFC 1939 §5): STAT, LIST, UIDL, RETR, TOP, DELE, RSET.

A mixin of ``POP3Server`` (services/access/pop3/server.py), kept apart so each module stays small.
Listings and messages are streamed at the client's pace (``Stream``), never built whole; deletions
are only marked here and happen in the UPDATE state (QUIT).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet import defer, threads
from twisted.python import log
from twisted.python.failure import Failure

from appliance.mailstore import MailstoreError
from services.access.pop3.commands import Command
from services.access.pop3.maildrop import Maildrop, MessageReader
from services.access.pop3.stream import Stream

LIST_BATCH = 1024  # LIST/UIDL lines written per piece


class TransactionCommands:
    """The TRANSACTION commands; the attributes below are the session's (POP3Server sets them)."""

    if TYPE_CHECKING:
        state: str
        drop: Maildrop | None
        transport: Any
        _deleted: set[int]
        _retrieved: set[int]
        _live: tuple[int, int]
        _closed: bool
        _stream: Stream | None
        _output_paused: bool

        def ok(self, text: str = "") -> None: ...
        def err(self, text: str) -> None: ...
        def resetTimeout(self) -> None: ...
        def _unknown(self, text: str) -> None: ...
        def _wait(self, d: defer.Deferred[Any]) -> None: ...

    # --- TRANSACTION -------------------------------------------------------------------------

    def _need_transaction(self) -> bool:
        if self.state != "transaction":
            self._unknown("Unknown command in this state (log in first)")
            return False
        return True

    def _message(self, n: int | None) -> bool:
        """Whether N names a message of this session that is not marked deleted; answers -ERR if not."""
        assert self.drop is not None and n is not None
        if not 1 <= n <= len(self.drop):
            self.err(f"There's no message {n}")
            return False
        if n in self._deleted:
            self.err("Message is deleted")
            return False
        return True

    def do_STAT(self, cmd: Command) -> None:
        if self._need_transaction():
            self.ok(f"{self._live[0]} {self._live[1]}")

    def do_LIST(self, cmd: Command) -> None:
        self._listing(cmd, lambda n: b"%d" % self.drop.sizes[n - 1])  # type: ignore[union-attr]

    def do_UIDL(self, cmd: Command) -> None:
        self._listing(cmd, lambda n: self.drop.unique_id(n))  # type: ignore[union-attr]

    def _listing(self, cmd: Command, value: Any) -> None:
        if not self._need_transaction():
            return
        drop = self.drop
        assert drop is not None
        if cmd.msg is not None:
            if self._message(cmd.msg):
                self.ok(f"{cmd.msg} {value(cmd.msg).decode()}")
            return
        self.ok(f"{self._live[0]} messages ({self._live[1]} octets)" if cmd.verb == "LIST" else "")
        numbers = iter(range(1, len(drop) + 1))
        deleted = self._deleted
        finished = False

        def piece() -> bytes | None:
            nonlocal finished
            if finished:
                return None
            out = []
            for n in numbers:
                if n not in deleted:
                    out.append(b"%d %s\r\n" % (n, value(n)))
                    if len(out) >= LIST_BATCH:
                        return b"".join(out)
            finished = True
            return b"".join(out) + b".\r\n"

        self._wait(self._stream_out(piece))

    def _stream_out(self, source: Any) -> defer.Deferred[None]:
        """Write SOURCE's pieces at the client's pace; further commands wait until it is all written."""
        stream = Stream(self.transport.write, source, self.resetTimeout)
        self._stream = stream

        def ended(result: Any) -> Any:
            self._stream = None
            return result

        return stream.start(paused=self._output_paused).addBoth(ended)

    def do_RETR(self, cmd: Command) -> None:
        self._send_message(cmd, None)

    def do_TOP(self, cmd: Command) -> None:
        self._send_message(cmd, cmd.lines)

    def _send_message(self, cmd: Command, body_lines: int | None) -> None:
        """RETR/TOP: open the file in a worker thread, then stream it in CHUNK pieces (never whole)."""
        if not self._need_transaction() or not self._message(cmd.msg):
            return
        drop, n = self.drop, cmd.msg
        assert drop is not None and n is not None
        d = threads.deferToThread(drop.open_message, n, body_lines)

        def opened(reader: MessageReader) -> defer.Deferred[None] | None:
            if self._closed:
                threads.deferToThread(reader.close)
                return None
            # RFC 1939 §7 RETR: "+OK" then the message; the size is the one LIST gave.
            self.ok(f"{drop.sizes[n - 1]} octets" if body_lines is None else "")

            def sent(result: Any) -> Any:
                # After a lost connection a read may still be running: close() waits for it.
                threads.deferToThread(reader.close).addErrback(log.err)
                if body_lines is None and not self._closed:
                    self._retrieved.add(n)  # gets \Seen in the UPDATE state
                return result

            return self._stream_out(lambda: threads.deferToThread(reader.next_chunk)).addBoth(sent)

        def missing(f: Failure) -> None:
            f.trap(MailstoreError)
            self.err("Message was removed by another session")

        d.addCallbacks(opened, missing)
        self._wait(d)

    def do_DELE(self, cmd: Command) -> None:
        if self._need_transaction() and self._message(cmd.msg):
            assert self.drop is not None and cmd.msg is not None
            self._deleted.add(cmd.msg)
            self._live = (self._live[0] - 1, self._live[1] - self.drop.sizes[cmd.msg - 1])
            self.ok(f"Message {cmd.msg} marked to be deleted")

    def do_RSET(self, cmd: Command) -> None:
        if self._need_transaction():
            assert self.drop is not None
            self._deleted.clear()
            self._live = (len(self.drop), sum(self.drop.sizes))
            self.ok(f"Maildrop has {self._live[0]} messages ({self._live[1]} octets)")
