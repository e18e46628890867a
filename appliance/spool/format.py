"""On-disk framing of one queued message, and of its per-recipient outcome log.

A queue file is::

    APPLSPOOL1 <envelope length> <data length> <sha256 hex of envelope+data>\\n
    <envelope: UTF-8 JSON {"id", "sender", "recipients", "arrival", "meta"}>
    <data: the message bytes exactly as accepted>

The lengths make truncation detectable and the checksum catches torn or
bit-rotten files; recovery quarantines anything that does not verify.

The outcome log ``log/ID`` is JSON lines appended as things happen: one line per
recipient that reached a final state (``{"r": rcpt, "s": "delivered"|"failed", ...}``)
and schedule lines (``{"e": "deferred", "attempts": N, "next": T}``). A torn last
line (a crash mid-append) is ignored: that recipient is simply retried.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

MAGIC = b"APPLSPOOL1"
MAX_HEADER = 200


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
    env = json.dumps(
        {"id": msg.id, "sender": msg.sender, "recipients": list(msg.recipients), "arrival": msg.arrival, "meta": msg.meta},
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()
    h = hashlib.sha256(env)
    h.update(msg.data)
    header = b"%s %d %d %s\n" % (MAGIC, len(env), len(msg.data), h.hexdigest().encode())
    return header + env + msg.data


def _header(raw: bytes) -> tuple[int, int, str, int]:
    nl = raw.find(b"\n", 0, MAX_HEADER)
    if nl < 0:
        raise SpoolFormatError("no header line")
    parts = raw[:nl].split(b" ")
    if len(parts) != 4 or parts[0] != MAGIC:
        raise SpoolFormatError("bad magic or header")
    try:
        env_len, data_len = int(parts[1]), int(parts[2])
    except ValueError:
        raise SpoolFormatError("bad lengths in header") from None
    return env_len, data_len, parts[3].decode("ascii", "replace"), nl + 1


def decode(raw: bytes, *, with_data: bool = True) -> SpooledMessage:
    """Parse and verify a queue file's bytes; raises SpoolFormatError naming what is wrong."""
    env_len, data_len, digest, start = _header(raw)
    if len(raw) != start + env_len + data_len:
        raise SpoolFormatError(f"length mismatch: file has {len(raw) - start} bytes after header, header says {env_len + data_len}")
    env_b = raw[start : start + env_len]
    data = raw[start + env_len :]
    h = hashlib.sha256(env_b)
    h.update(data)
    if h.hexdigest() != digest:
        raise SpoolFormatError("checksum mismatch")
    try:
        env = json.loads(env_b)
        msg = SpooledMessage(
            id=str(env["id"]),
            sender=str(env["sender"]),
            recipients=tuple(str(r) for r in env["recipients"]),
            arrival=float(env["arrival"]),
            meta=dict(env.get("meta") or {}),
            data=data if with_data else b"",
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
