"""FETCH and UID FETCH (RFC 9051 §6.4.5), with BINARY (RFC 3516), CHANGEDSINCE and VANISHED
(RFC 7162 §3.1.4.1, §3.2.6).

Responses are built in worker threads in batches bounded by bytes (``BATCH_BYTES`` of
output), and each batch is written only when the transport has drained the previous
one (``conn.drain``): a slow client reading a large mailbox makes the server wait, not
buffer (issue 13 item 4). ENVELOPE and BODYSTRUCTURE go through the index's cache
(messages never change within a UIDVALIDITY).
"""

from __future__ import annotations

import time
from typing import Any

from services.access.imap import storeio
from services.access.imap.dispatch import ONLY_SELECTED, command
from services.access.imap.errors import Bad, Done, No
from services.access.imap.selected import flag_list, seqset
from services.access.imap.session import Session
from services.access.imapmsg import binary as msg_binary
from services.access.imapmsg import bodystructure as msg_bodystructure
from services.access.imapmsg import envelope as msg_envelope
from services.access.imapmsg import section as msg_section
from services.access.imapproto.types import FetchAtt, Section

BATCH_BYTES = 256 * 1024  # output built per worker-thread step (then drained)
BATCH_RECORDS = 1000  # index rows read per step (records are small)
_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
_NEEDS_DATA = frozenset({"ENVELOPE", "BODYSTRUCTURE", "BODY", "BINARY", "BINARY.SIZE", "RFC822", "RFC822.HEADER",
                         "RFC822.TEXT"})
_CACHED = {"ENVELOPE": "envelope", "BODYSTRUCTURE": "bodystructure", "BODY": "body"}


class UnknownCte(Exception):
    """BINARY of a part whose Content-Transfer-Encoding is unknown (RFC 3516 §4.3)."""


def imap_date(ts: float) -> bytes:
    t = time.gmtime(ts)
    return b'"%02d-%s-%04d %02d:%02d:%02d +0000"' % (t.tm_mday, _MONTHS[t.tm_mon - 1].encode(), t.tm_year,
                                                      t.tm_hour, t.tm_min, t.tm_sec)


def literal(data: bytes, binary: bool = False) -> bytes:
    # RFC 3516 §4.2: literal8 "~{n}" for content that may hold NUL.
    return (b"~{%d}\r\n" if binary and b"\0" in data else b"{%d}\r\n") % len(data) + data


def section_spec(sec: Section) -> bytes:
    part = ".".join(str(p) for p in sec.part)
    text = sec.text or ""
    spec = part + ("." if part and text else "") + text
    if sec.fields:
        spec += " (" + " ".join(f.upper() for f in sec.fields) + ")"
    return spec.encode("utf-8")


def sets_seen(att: FetchAtt) -> bool:
    """RFC 9051 §6.4.5: BODY[...] (not .PEEK), BINARY[...] and RFC822 / RFC822.TEXT set \\Seen."""
    if att.name in ("BODY", "BINARY") and att.section is not None:
        return not att.peek
    return att.name in ("RFC822", "RFC822.TEXT")


def _partial(content: bytes, att: FetchAtt) -> tuple[bytes, bytes]:
    if att.partial is None:
        return b"", content
    origin, length = att.partial
    return b"<%d>" % origin, content[origin:origin + length]


class _Message:
    """One message while its FETCH response is built (the data is read at most once)."""

    def __init__(self, mbox: Any, rec: Any) -> None:
        self.mbox, self.rec = mbox, rec
        self._data: bytes | None = None

    def data(self) -> bytes:
        if self._data is None:
            self._data = self.mbox.read(self.rec.uid)
        return self._data

    def cached(self, key: str, build: Any) -> bytes:
        value = self.mbox.cache_get(self.rec.uid, key)
        if value is None:
            value = build(self.data())
            self.mbox.cache_put(self.rec.uid, key, value)
        return value


def _item(m: _Message, att: FetchAtt, flags: list[str]) -> bytes:
    rec, name = m.rec, att.name
    if name == "UID":
        return b"UID %d" % rec.uid
    if name == "FLAGS":
        return b"FLAGS " + flag_list(flags)
    if name == "INTERNALDATE":
        return b"INTERNALDATE " + imap_date(rec.internaldate)
    if name == "RFC822.SIZE":
        return b"RFC822.SIZE %d" % rec.size
    if name == "MODSEQ":
        return b"MODSEQ (%d)" % rec.modseq
    if name == "ENVELOPE":
        return b"ENVELOPE " + m.cached("envelope", msg_envelope)
    if name == "BODYSTRUCTURE":
        return b"BODYSTRUCTURE " + m.cached("bodystructure", lambda d: msg_bodystructure(d, True))
    if name == "BODY" and att.section is None:
        return b"BODY " + m.cached("body", lambda d: msg_bodystructure(d, False))
    if name == "RFC822":
        return b"RFC822 " + literal(m.data())
    if name in ("RFC822.HEADER", "RFC822.TEXT"):
        sec = Section(text="HEADER" if name == "RFC822.HEADER" else "TEXT")
        return name.encode() + b" " + literal(msg_section(m.data(), sec) or b"")
    sec = att.section or Section()
    if name == "BODY":
        origin, content = _partial(msg_section(m.data(), sec) or b"", att)
        return b"BODY[" + section_spec(sec) + b"]" + origin + b" " + literal(content)
    decoded = msg_binary(m.data(), sec)
    if decoded is None:
        raise UnknownCte()
    spec = ".".join(str(p) for p in sec.part).encode()
    if name == "BINARY.SIZE":
        return b"BINARY.SIZE[" + spec + b"] %d" % len(decoded)
    origin, content = _partial(decoded, att)
    return b"BINARY[" + spec + b"]" + origin + b" " + literal(content, binary=True)


def _batch(mbox: Any, uids: list[int], pos: int, atts: tuple[FetchAtt, ...], seen: bool, changedsince: int | None,
           recent: set[int]) -> tuple[list[tuple[int, bytes]], int, list[Any]]:
    """In a worker thread: FETCH responses for UIDS[POS:...] up to BATCH_BYTES; (responses, next pos, records
    whose flags this FETCH changed)."""
    chunk = uids[pos:pos + BATCH_RECORDS]
    records = mbox.records(chunk)
    if changedsince is not None:
        records = [r for r in records if r.modseq > changedsince]
    changed: list[Any] = []
    if seen:
        unseen = [r.uid for r in records if "\\Seen" not in r.flags]
        if unseen:
            result = mbox.store(unseen, "add", ("\\Seen",))
            changed = list(result.changed)
            by_uid = {r.uid: r for r in changed}
            records = [by_uid.get(r.uid, r) for r in records]
    flag_changed = {r.uid for r in changed}
    wants_flags = any(a.name == "FLAGS" for a in atts)
    out: list[tuple[int, bytes]] = []
    size = 0
    for rec in records:
        from appliance.mailstore import MailstoreError

        flags = list(rec.flags) + (["\\Recent"] if rec.uid in recent else [])
        m = _Message(mbox, rec)
        try:
            items = [_item(m, att, flags) for att in atts]
        except MailstoreError:
            continue  # expunged meanwhile: reported at the next command that may
        if rec.uid in flag_changed and not wants_flags:
            items.append(b"FLAGS " + flag_list(flags))  # RFC 9051 §6.4.5: the new \Seen is reported
        body = b" ".join(items)
        out.append((rec.uid, body))
        size += len(body)
        if size >= BATCH_BYTES:
            return out, pos + chunk.index(rec.uid) + 1, changed
    return out, pos + len(chunk), changed


@command("FETCH", ONLY_SELECTED, uid=True, expunge_ok=False)
async def fetch(s: Session, cmd: Any) -> Done:
    sel = s.sel
    assert sel is not None
    a = cmd.args
    atts: tuple[FetchAtt, ...] = tuple(a.atts)
    if cmd.uid and not any(x.name == "UID" for x in atts):
        atts = (FetchAtt("UID"), *atts)  # RFC 9051 §6.4.9: UID FETCH responses carry the UID
    if a.changedsince is not None:
        s.condstore = True  # RFC 7162 §3.1.4.1: CHANGEDSINCE implies MODSEQ in the responses
        if not any(x.name == "MODSEQ" for x in atts):
            atts = (*atts, FetchAtt("MODSEQ"))
    elif any(x.name == "MODSEQ" for x in atts):
        s.condstore = True
    if a.vanished and (not cmd.uid or not s.qresync or a.changedsince is None):
        # RFC 7162 §3.2.6: VANISHED only in UID FETCH, with CHANGEDSINCE, once QRESYNC is enabled.
        raise Bad("VANISHED needs UID FETCH with CHANGEDSINCE and QRESYNC enabled")
    uids = sel.live(sel.resolve(a.sequence, cmd.uid))
    if a.vanished:
        _, expunged = await storeio.run(sel.mailbox.changes_since, a.changedsince)
        largest = max([*(sel.uids[-1:] or [0]), *expunged]) if expunged else 0
        gone = sorted(u for u in expunged if sel.seq_of(u) is None and a.sequence.contains(u, largest))
        if gone:
            s.write(b"* VANISHED (EARLIER) " + seqset(gone) + b"\r\n")
    seen = not sel.readonly and any(sets_seen(x) for x in atts)
    pos = 0
    flagged_any = False
    while pos < len(uids):
        try:
            out, pos, changed = await storeio.run(_batch, sel.mailbox, uids, pos, atts, seen, a.changedsince,
                                                  set(sel.recent))
        except UnknownCte:
            raise No("unknown Content-Transfer-Encoding", "UNKNOWN-CTE") from None
        if s.sel is not sel or s.closed:
            return Done("FETCH aborted")
        for r in changed:
            sel.own[r.uid] = r.modseq
            flagged_any = True
        for uid, body in out:
            seq = sel.seq_of(uid)
            if seq is not None:
                s.write(b"* %d FETCH (" % seq + body + b")\r\n")
        await s.conn.drain()
    if flagged_any:
        s.notify_others()
    return Done("FETCH completed")
