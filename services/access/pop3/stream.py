"""Write a long response (a message, a 100,000-line LIST) in bounded pieces, at the client's pace.

The session is the transport's push producer (Twisted pauses it once the write
buffer is full and resumes it when the buffer has drained) and passes pause and
resume on to the one Stream it is sending. A Stream writes one piece, and the next
only while it is not paused. The pieces come from a ``source``: a call that returns
bytes, None at the end, or a Deferred of either (a file read in a worker thread).
So a session holds one piece plus the transport's buffer, whatever the size of the
message.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import defer
from twisted.python.failure import Failure

Source = Callable[[], "bytes | None | defer.Deferred[bytes | None]"]


class Stream:
    """Send SOURCE's pieces with WRITE; ``done`` fires with None when all is written, or a Failure.

    ``progress`` is called after every piece (the session resets its idle timer).
    After ``stop`` (connection lost) ``done`` fires with None and no more is read.
    """

    def __init__(self, write: Callable[[bytes], None], source: Source,
                 progress: Callable[[], None] | None = None) -> None:
        self.write = write
        self.source = source
        self.progress = progress
        self.done: defer.Deferred[None] = defer.Deferred()
        self._paused = False
        self._reading = False
        self._finished = False

    def start(self, paused: bool = False) -> defer.Deferred[None]:
        self._paused = paused
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
            self._send(piece)

    def _arrived(self, piece: bytes | None) -> None:
        self._reading = False
        if not self._finished:
            self._send(piece)
            self._pump()

    def _failed(self, failure: Failure) -> None:
        self._reading = False
        self._end(failure)

    def _send(self, piece: bytes | None) -> None:
        if piece is None:
            self._end(None)
            return
        self.write(piece)  # the transport may pause us before this returns
        if self.progress is not None:
            self.progress()

    def _end(self, result: Failure | None) -> None:
        if self._finished:
            return
        self._finished = True
        if result is None:
            self.done.callback(None)
        else:
            self.done.errback(result)

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        self._paused = False
        self._pump()

    def stop(self) -> None:
        """The connection is gone: stop reading; a read in flight is dropped when it arrives."""
        self._end(None)
