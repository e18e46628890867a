"""On-disk framing of one queued message, and of its per-recipient outcome log.

A queue file is::

    APPLSPOOL1 <envelope length> <data length> <sha256 hex of envelope+data>\\n
    <envelope: UTF-8 JSON {"id", "sender", "recipients", "arrival", "meta"}>
    <data: the message bytes exactly as accepted>

The lengths make truncation detectable and the checksum catches torn or
bit-rotten files; recovery quarantines anything that does not verify.

A message the relay received over SMTP is streamed to disk as it arrives, so its
file is laid out in the order the bytes become known (``APPLSPOOL2``)::

    APPLSPOOL2 <envelope length> <header block length> <body length> <sha256 hex>\n   (fixed width)
    <envelope JSON> <body: as received, from the empty line on> <header block: the final header fields>

The message is the header block followed by the body. The first line has a
fixed width: the file starts with that many zero bytes while the body is
written, and the real line is written last, just before the fsync. The checksum
covers every byte after the first line, in file order.

The outcome log ``log/ID`` is JSON lines appended as things happen: one line per
recipient that reached a final state (``{"r": rcpt, "s": "delivered"|"failed", ...}``)
and schedule lines (``{"e": "deferred", "attempts": N, "next": T}``). A torn last
line (a crash mid-append) is ignored: that recipient is simply retried.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

MAGIC = b"APPLSPOOL1"
MAGIC2 = b"APPLSPOOL2"
MAX_HEADER = 200
PREFIX2_LEN = len(b"APPLSPOOL2 0000000000 0000000000 000000000000 ") + 64 + 1


class SpoolFormatError(ValueError):
    """A queue file whose framing or checksum does not verify."""


@dataclass(frozen=True)
class SpooledMessage:
    id: str
    sender: str  # "" is the null sender <>
    recipients: tuple[str, ...]
    arrival: float
    meta: dict[str, Any] = field(default_factory=dict)
    data: bytes = b""


def encode(msg: SpooledMessage) -> bytes:
    env = envelope_bytes(msg)
    h = hashlib.sha256(env)
    h.update(msg.data)
    header = b"%s %d %d %s\n" % (MAGIC, len(env), len(msg.data), h.hexdigest().encode())
    return header + env + msg.data


def envelope_bytes(msg: SpooledMessage) -> bytes:
    return json.dumps(
        {"id": msg.id, "sender": msg.sender, "recipients": list(msg.recipients), "arrival": msg.arrival, "meta": msg.meta},
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()


def prefix2(env_len: int, head_len: int, body_len: int, digest: str) -> bytes:
    """The fixed-width first line of a streamed (APPLSPOOL2) queue file."""
    line = b"%s %010d %010d %012d %s\n" % (MAGIC2, env_len, head_len, body_len, digest.encode())
    if len(line) != PREFIX2_LEN:
        raise ValueError("message too large for the queue file format")
    return line


@dataclass(frozen=True)
class _Layout:
    start: int  # where the envelope begins (after the first line)
    env_len: int
    body_len: int  # APPLSPOOL1: the whole data
    head_len: int  # APPLSPOOL2: the header block after the body; 0 for APPLSPOOL1
    digest: str

    @property
    def size(self) -> int:
        return self.start + self.env_len + self.body_len + self.head_len


def _layout(first: bytes) -> _Layout:
    """Parse a queue file's first line (FIRST: at least its first MAX_HEADER bytes, or the whole file)."""
    if first.startswith(MAGIC2):
        if len(first) < PREFIX2_LEN or first[PREFIX2_LEN - 1:PREFIX2_LEN] != b"\n":
            raise SpoolFormatError("no header line")
        parts = first[:PREFIX2_LEN - 1].split(b" ")
        try:
            env_len, head_len, body_len = int(parts[1]), int(parts[2]), int(parts[3])
            digest = parts[4].decode("ascii")
        except (ValueError, IndexError, UnicodeDecodeError):
            raise SpoolFormatError("bad lengths in header") from None
        if len(parts) != 5 or min(env_len, head_len, body_len) < 0:
            raise SpoolFormatError("bad magic or header")
        return _Layout(PREFIX2_LEN, env_len, body_len, head_len, digest)
    nl = first.find(b"\n", 0, MAX_HEADER)
    if nl < 0:
        raise SpoolFormatError("no header line")
    parts = first[:nl].split(b" ")
    if len(parts) != 4 or parts[0] != MAGIC:
        raise SpoolFormatError("bad magic or header")
    try:
        env_len, data_len = int(parts[1]), int(parts[2])
    except ValueError:
        raise SpoolFormatError("bad lengths in header") from None
    if min(env_len, data_len) < 0:
        raise SpoolFormatError("bad lengths in header")
    return _Layout(nl + 1, env_len, data_len, 0, parts[3].decode("ascii", "replace"))


def _check_size(lay: _Layout, size: int) -> None:
    if size != lay.size:
        raise SpoolFormatError(f"length mismatch: file has {size - lay.start} bytes after header, "
                               f"header says {lay.size - lay.start}")


def decode(raw: bytes, *, with_data: bool = True) -> SpooledMessage:
    """Parse and verify a queue file's bytes; raises SpoolFormatError naming what is wrong."""
    lay = _layout(raw)
    _check_size(lay, len(raw))
    if hashlib.sha256(memoryview(raw)[lay.start:]).hexdigest() != lay.digest:
        raise SpoolFormatError("checksum mismatch")
    body_at = lay.start + lay.env_len
    head_at = body_at + lay.body_len
    data = b""
    if with_data:
        # APPLSPOOL2: the header block (after the body in the file) comes first in the message.
        data = raw[head_at:] + raw[body_at:head_at] if lay.head_len else raw[body_at:]
    return _envelope(raw[lay.start:body_at], data)


def read_head(path: str | os.PathLike[str], block: int = 1 << 20) -> SpooledMessage:
    """Verify a queue file block by block and return its envelope only (memory: one block)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        first = f.read(max(PREFIX2_LEN, MAX_HEADER))
        lay = _layout(first)
        _check_size(lay, size)
        f.seek(lay.start)
        env_b = f.read(lay.env_len)
        h = hashlib.sha256(env_b)
        while chunk := f.read(block):
            h.update(chunk)
    if h.hexdigest() != lay.digest:
        raise SpoolFormatError("checksum mismatch")
    return _envelope(env_b, b"")


def _envelope(env_b: bytes, data: bytes) -> SpooledMessage:
    try:
        env = json.loads(env_b)
        msg = SpooledMessage(
            id=str(env["id"]),
            sender=str(env["sender"]),
            recipients=tuple(str(r) for r in env["recipients"]),
            arrival=float(env["arrival"]),
            meta=dict(env.get("meta") or {}),
            data=data,
        )
        # Text the box could not write back or send (lone surrogates from "\ud800" escapes).
        json.dumps([msg.id, msg.sender, msg.recipients, msg.meta], ensure_ascii=False).encode()
    except (ValueError, KeyError, TypeError, OverflowError) as exc:  # OverflowError: float(10**400)
        raise SpoolFormatError(f"bad envelope: {exc}") from None
    except RecursionError:  # deeply nested JSON (tests/fuzz/regressions/spool)
        raise SpoolFormatError("bad envelope: nested too deeply") from None
    if not msg.recipients:
        raise SpoolFormatError("envelope has no recipients")
    return msg


def encode_log(record: dict[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def decode_log(raw: bytes) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for line in raw.split(b"\n")[:-1]:  # the part after the last newline is torn or empty
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out
