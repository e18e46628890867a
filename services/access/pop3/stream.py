"""Write a long response (a message, a 100,000-line LIST) in bounded pieces, at the client's pace.

A push producer on the transport: it writes one piece, and the next only while the
transport has not asked it to pause (Twisted pauses a producer once its write buffer
is full, and resumes it when the buffer drains). The pieces come from a ``source``:
a call that returns bytes, None at the end, or a Deferred of either (a file read in a
worker thread). So a session holds one piece plus the transport's buffer, whatever
the size of the message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

Source = Callable[[], "bytes | None | defer.Deferred[bytes | None]"]


@implementer(IPushProducer)
class Stream:
    """Stream SOURCE to TRANSPORT; ``done`` fires with None when all is written, or a Failure.

    ``progress`` is called after every piece (the session resets its idle timer).
    After ``stopProducing`` (connection lost) ``done`` fires with None and no more is read.
    """

    def __init__(self, transport: Any, source: Source, progress: Callable[[], None] | None = None) -> None:
        self.transport = transport
        self.source = source
        self.progress = progress
        self.done: defer.Deferred[None] = defer.Deferred()
        self._paused = False
        self._reading = False
        self._finished = False

    def start(self) -> defer.Deferred[None]:
        self.transport.registerProducer(self, True)
        self._pump()
        return self.done

    def _pump(self) -> None:
        while not (self._paused or self._reading or self._finished):
            try:
                piece = self.source()
            except Exception:
                self._end(Failure())
                return
            if isinstance(piece, defer.Deferred):
                self._reading = True
                piece.addCallbacks(self._arrived, self._failed)
                return
            self._write(piece)

    def _arrived(self, piece: bytes | None) -> None:
        self._reading = False
        if not self._finished:
            self._write(piece)
            self._pump()

    def _failed(self, failure: Failure) -> None:
        self._reading = False
        self._end(failure)

    def _write(self, piece: bytes | None) -> None:
        if piece is None:
            self._end(None)
            return
        self.transport.write(piece)  # may call pauseProducing before it returns
        if self.progress is not None:
            self.progress()

    def _end(self, result: Failure | None) -> None:
        if self._finished:
            return
        self._finished = True
        self.transport.unregisterProducer()
        self.done.callback(None) if result is None else self.done.errback(result)

    # --- IPushProducer ---------------------------------------------------------------------

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._pump()

    def stopProducing(self) -> None:
        # The connection is gone: stop reading; a read in flight is dropped when it arrives.
        self._end(None)

    @property
    def reading(self) -> bool:
        """A piece is being produced in a worker thread right now."""
        return self._reading
