"""Fuzz targets: one function per parser, taking arbitrary bytes, raising only on a real fault.

Each target runs the box's own parsing code on the input and checks what must
hold for *any* input: only the documented error type escapes, and whatever is
accepted round-trips. They are driven by atheris (coverage-guided, ``run.py``)
within a fixed time budget in ``make test``, and every file in ``corpus/`` and
``regressions/`` is replayed through them on every run (``test_fuzz.py``).

- ``registry``: registry.json as the relay and the sync agent read it
  (``appliance.registry.model.loads``);
- ``spool``: a queue file and an outcome log (``appliance.spool.format``); the
  first byte chooses raw bytes (framing checks) or an envelope framed with a
  correct checksum (so the envelope parser is reached);
- ``smtp``: the relay's SMTP parsing: the MAIL/RCPT path argument
  (``RelaySMTP._getaddr``), DATA (``RelaySMTP.read_data``, checked against the
  box's own dot-stuffing, ``appliance.submitclient``) and the header/body split
  of the message (``appliance.message.Message``);
- ``imap``: the IMAP command reader (``services.access.imapproto.parser``),
  defined in ``tests/imapproto/fuzz_target.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable

from appliance.message import Message
from appliance.registry import model
from appliance.spool import format as spool_format
from appliance.submitclient import _dot_stuff
from services.relay.data import TERMINATOR
from services.relay.smtp import RelaySMTP
from tests.imapproto.fuzz_target import imap

# --- registry ---------------------------------------------------------------------------------------

def registry(data: bytes) -> None:
    try:
        reg = model.loads(data)
    except model.RegistryError:
        return
    # Accepted: the invariants the relay relies on.
    ids = [m.id for m in reg.members]
    assert len(ids) == len(set(ids)), "duplicate member id accepted"
    domains = [d for m in reg.members for d in m.domains]
    assert len(domains) == len(set(domains)), "a domain in two members accepted"
    nets = [(m.id, n) for m in reg.members for r in m.relays for n in r.addresses]
    for i, (a, na) in enumerate(nets):
        for b, nb in nets[i + 1:]:
            assert a == b or not na.overlaps(nb), f"{a} and {b} overlap"
    for m in reg.members:
        assert m.status in model.STATUSES
        reg.member_for_domain(m.domains[0]) if m.domains else None


# --- spool ------------------------------------------------------------------------------------------

def _framed(env: bytes, body: bytes) -> bytes:
    h = hashlib.sha256(env)
    h.update(body)
    return b"%s %d %d %s\n" % (spool_format.MAGIC, len(env), len(body), h.hexdigest().encode()) + env + body


def spool(data: bytes) -> None:
    if not data:
        return
    mode, rest = data[0] % 3, data[1:]
    if mode == 0:
        raw = rest
    elif mode == 1:
        cut = rest.find(b"\x00")
        env, body = (rest, b"") if cut < 0 else (rest[:cut], rest[cut + 1:])
        raw = _framed(env, body)
    else:
        records = spool_format.decode_log(rest)
        assert all(isinstance(r, dict) for r in records)
        return
    try:
        msg = spool_format.decode(raw)
    except spool_format.SpoolFormatError:
        return
    again = spool_format.decode(spool_format.encode(msg))
    assert again == msg, "a decoded queue file does not survive encode/decode"
    assert spool_format.decode(raw, with_data=False).id == msg.id


# --- smtp -------------------------------------------------------------------------------------------

_loop: asyncio.AbstractEventLoop | None = None


def _session(limit: int) -> RelaySMTP:
    # Only the state _getaddr and read_data use; the rest of a session (policy, spool) is not involved.
    s = object.__new__(RelaySMTP)
    s._reader = asyncio.StreamReader(limit=1 << 20)  # type: ignore[attr-defined]
    s.data_size_limit = limit
    s._reset_timeout = lambda: None  # type: ignore[method-assign]
    return s


def _read_data(stream: bytes, limit: int) -> tuple[tuple[bytes, bool] | None, bytes]:
    global _loop
    if _loop is None:
        _loop = asyncio.new_event_loop()
    held: list[asyncio.StreamReader] = []

    async def read_all() -> tuple[bytes, bool]:
        # The session (and its StreamReader) is made inside the loop that runs it: made outside,
        # the reader asks for "the current event loop", which an earlier asyncio.run() in the
        # same process has unset (RuntimeError in the full suite, never alone).
        s = _session(limit)
        reader = s._reader  # type: ignore[attr-defined]
        held.append(reader)
        reader.feed_data(stream)
        reader.feed_eof()
        s.start_data()
        out = b""
        while (part := await s.read_data()) is not None:
            out += part
        return out, bool(limit) and len(out) > limit

    try:
        got = _loop.run_until_complete(read_all())
    except ConnectionResetError:
        got = None
    rest = bytes(held[0]._buffer)  # type: ignore[attr-defined]  # what is left for the command loop (pipelined commands)
    return got, rest


def smtp(data: bytes) -> None:
    if not data:
        return
    mode, rest = data[0] % 3, data[1:]
    if mode == 0:
        address, after = RelaySMTP._getaddr(object.__new__(RelaySMTP), rest.decode("utf-8", "replace"))
        assert address is None or isinstance(address, str)
        assert after is None or isinstance(after, str)
    elif mode == 1:
        # DATA as a client sends it (the box's own stuffing), then pipelined bytes after the end.
        cut = rest.find(b"\x00")
        body, pipelined = (rest, b"QUIT\r\n") if cut < 0 else (rest[:cut], rest[cut + 1:])
        stuffed = _dot_stuff(body)
        limit = 0 if not body else body[0] * 64
        got, left = _read_data(stuffed + b".\r\n" + pipelined, limit)
        assert got is not None, "DATA end not found after a correctly stuffed message"
        # What the client meant: its lines with CRLF ends (written independently of both stuffers).
        expected = body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if not expected.endswith(b"\r\n"):
            expected += b"\r\n"
        assert left == pipelined, "bytes after the end of DATA were lost or changed"
        if got[1]:
            assert limit and len(expected) > limit, "over-size flagged for a message within the limit"
        else:
            assert got[0] == expected, "DATA not read back as sent"
            assert not limit or len(got[0]) <= limit
    else:
        got, _ = _read_data(rest, 0)  # arbitrary bytes: an end, or a clean "connection closed"
        if got is not None:
            assert TERMINATOR in b"\r\n" + rest
        msg = Message.parse(rest)
        assert msg.to_bytes() == rest, "header/body split lost bytes"
        msg.header_values("From")
        msg.header_values("Subject")


TARGETS: dict[str, Callable[[bytes], None]] = {"registry": registry, "spool": spool, "smtp": smtp,
                                               "imap": imap}
