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
from bisect import bisect_left
from typing import Any

from services.access.imap import storeio
from services.access.imap.dispatch import ONLY_SELECTED, command
from services.access.imap.errors import Bad, Done, No
from services.access.imap.selected import flag_list, seqset
from services.access.imap.session import Session
from services.access.imapmsg import Message
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
    """One message while its FETCH response is built: its bytes are read, and its MIME tree
    parsed, at most once whatever the number of items asked for."""

    def __init__(self, mbox: Any, rec: Any, known: dict[str, dict[int, bytes]],
                 pending: list[tuple[int, str, bytes]]) -> None:
        self.mbox, self.rec = mbox, rec
        self._msg: Message | None = None
        self.known = known  # cache key -> {uid: value}, read for the whole batch (``_batch``)
        self.pending = pending  # cache rows to write, one transaction per batch

    @property
    def msg(self) -> Message:
        if self._msg is None:
            self._msg = Message(self.mbox.read(self.rec.uid))
        return self._msg

    def data(self) -> bytes:
        return self.msg.data

    def cached(self, key: str, build: Any) -> bytes:
        value = self.known[key].get(self.rec.uid)
        if value is None:
            value = build(self.msg)
            self.pending.append((self.rec.uid, key, value))
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
        return b"ENVELOPE " + m.cached("envelope", lambda msg: msg.envelope())
    if name == "BODYSTRUCTURE":
        return b"BODYSTRUCTURE " + m.cached("bodystructure", lambda msg: msg.bodystructure(True))
    if name == "BODY" and att.section is None:
        return b"BODY " + m.cached("body", lambda msg: msg.bodystructure(False))
    if name == "RFC822":
        return b"RFC822 " + literal(m.data())
    if name in ("RFC822.HEADER", "RFC822.TEXT"):
        sec = Section(text="HEADER" if name == "RFC822.HEADER" else "TEXT")
        return name.encode() + b" " + literal(m.msg.section(sec) or b"")
    sec = att.section or Section()
    if name == "BODY":
        origin, content = _partial(m.msg.section(sec) or b"", att)  # no such part: "" (RFC 9051 §6.4.5)
        return b"BODY[" + section_spec(sec) + b"]" + origin + b" " + literal(content)
    decoded = m.msg.binary(sec)
    if decoded is None:
        raise UnknownCte()
    spec = ".".join(str(p) for p in sec.part).encode()
    if name == "BINARY.SIZE":
        return b"BINARY.SIZE[" + spec + b"] %d" % len(decoded)
    origin, content = _partial(decoded, att)
    return b"BINARY[" + spec + b"]" + origin + b" " + literal(content, binary=True)


# Items answered from the index row alone: built without a per-message object (FETCH 1:* (UID FLAGS)
# over 100,000 messages is the common case of a client opening a mailbox, issue 13).
_META_ITEMS = {
    "UID": lambda rec, recent: b"UID %d" % rec.uid,
    "FLAGS": lambda rec, recent: flags_item(rec.flags, rec.uid in recent),
    "INTERNALDATE": lambda rec, recent: b"INTERNALDATE " + imap_date(rec.internaldate),
    "RFC822.SIZE": lambda rec, recent: b"RFC822.SIZE %d" % rec.size,
    "MODSEQ": lambda rec, recent: b"MODSEQ (%d)" % rec.modseq,
}
_flag_items: dict[tuple[tuple[str, ...], bool], bytes] = {}


def flags_item(flags: tuple[str, ...], recent: bool) -> bytes:
    """b"FLAGS (...)" for a record's flags, memoised (a mailbox has few distinct combinations)."""
    key = (flags, recent)
    got = _flag_items.get(key)
    if got is None:
        got = b"FLAGS " + flag_list([*flags, "\\Recent"] if recent else flags)
        if len(_flag_items) < 4096:
            _flag_items[key] = got
    return got


# Items answered from a record's UID, flags and MODSEQ alone: a FETCH of only these (a client's
# flag resync, FETCH 1:* (UID FLAGS)) does not wait for sizes and dates a fresh import has not
# filled in yet (appliance/mailstore/fill.py).
_NO_FILL_ITEMS = frozenset({"UID", "FLAGS", "MODSEQ"})


def _read(mbox: Any, chunk: list[int], atts: tuple[FetchAtt, ...]) -> list[Any]:
    """The records of CHUNK (ascending UIDs): one range scan when they are dense (1:*), else by key."""
    complete = any(a.name not in _NO_FILL_ITEMS for a in atts)
    if chunk and chunk[-1] - chunk[0] < 2 * len(chunk):
        wanted = set(chunk)
        return [r for r in mbox.records_range([(chunk[0], chunk[-1])], complete=complete) if r.uid in wanted]
    return mbox.records(chunk, complete=complete)


def _batch(mbox: Any, uids: list[int], pos: int, atts: tuple[FetchAtt, ...], seen: bool, changedsince: int | None,
           recent: set[int], view: Any) -> tuple[bytes, int, list[Any]]:
    """In a worker thread: the FETCH responses for UIDS[POS:...] up to BATCH_BYTES, as one block of bytes
    (numbered from VIEW, the session's UID array, which no command changes while FETCH runs: RFC 9051
    §7.5.1 keeps expunges out of FETCH); (responses, next pos, records whose flags this FETCH changed)."""
    chunk = uids[pos:pos + BATCH_RECORDS]
    records = _read(mbox, chunk, atts)
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
    pending: list[tuple[int, str, bytes]] = []
    try:
        return _responses(mbox, records, chunk, pos, atts, recent, view, changed, pending)
    finally:
        mbox.cache_put_many(pending)  # one commit (one fsync) for the batch's new ENVELOPEs etc.


def _responses(mbox: Any, records: list[Any], chunk: list[int], pos: int, atts: tuple[FetchAtt, ...],
               recent: set[int], view: Any, changed: list[Any],
               pending: list[tuple[int, str, bytes]]) -> tuple[bytes, int, list[Any]]:
    flag_changed = {r.uid for r in changed}
    wants_flags = any(a.name == "FLAGS" for a in atts)
    meta = [_META_ITEMS.get(a.name) for a in atts]
    meta_only = None not in meta and not flag_changed
    cache_keys = {_CACHED[a.name] for a in atts if a.name in _CACHED and a.section is None}
    known = {key: mbox.cache_get_many([r.uid for r in records], key) for key in cache_keys}
    out: list[bytes] = []
    size = 0
    hint = 0
    for rec in records:
        from appliance.mailstore import MailstoreError

        hint = bisect_left(view, rec.uid, hint)
        if hint >= len(view) or view[hint] != rec.uid:
            continue  # not in the session's view
        if meta_only:
            body = b" ".join([f(rec, recent) for f in meta])  # type: ignore[misc]
        else:
            flags = list(rec.flags) + (["\\Recent"] if rec.uid in recent else [])
            m = _Message(mbox, rec, known, pending)
            try:
                items = [_item(m, att, flags) for att in atts]
            except MailstoreError:
                continue  # expunged meanwhile: reported at the next command that may
            if rec.uid in flag_changed and not wants_flags:
                items.append(b"FLAGS " + flag_list(flags))  # RFC 9051 §6.4.5: the new \\Seen is reported
            body = b" ".join(items)
        out.append(b"* %d FETCH (%b)\r\n" % (hint + 1, body))
        size += len(body)
        if size >= BATCH_BYTES:
            return b"".join(out), pos + chunk.index(rec.uid) + 1, changed
    return b"".join(out), pos + len(chunk), changed


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
                                                  set(sel.recent), sel.uids)
        except UnknownCte:
            raise No("unknown Content-Transfer-Encoding", "UNKNOWN-CTE") from None
        if s.sel is not sel or s.closed:
            return Done("FETCH aborted")
        for r in changed:
            sel.own[r.uid] = r.modseq
            flagged_any = True
        if out:
            s.write(out)  # one write per batch: the TLS layer's cost is per call, not per byte
        await s.conn.drain()
    if flagged_any:
        s.notify_others()
    return Done("FETCH completed")
