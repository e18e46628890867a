"""SEARCH (RFC 9051 §6.4.4) with ESEARCH (RFC 4731), SEARCHRES (RFC 5182) and MODSEQ
(RFC 7162 §3.1.5); SORT and THREAD (RFC 5256). Evaluation is C2's (services.access.imapmsg)
over views of the index records, in a worker thread."""

from __future__ import annotations

from typing import Any

from services.access.imap import storeio
from services.access.imap.dispatch import ONLY_SELECTED, command
from services.access.imap.errors import Done
from services.access.imap.searchviews import evaluate, has_modseq
from services.access.imap.selected import seqset
from services.access.imap.session import Session


def _numbers(s: Session, uids: list[int], by_uid: bool) -> list[int]:
    sel = s.sel
    assert sel is not None
    if by_uid:
        return uids
    return [n for n in (sel.seq_of(u) for u in uids) if n is not None]


@command("SEARCH", ONLY_SELECTED, uid=True, expunge_ok=False)
async def search(s: Session, cmd: Any) -> Done:
    sel = s.sel
    assert sel is not None
    a = cmd.args
    modseq = has_modseq(a.key)
    if modseq:
        s.condstore = True
    hits, views = await storeio.run(evaluate, sel, a.key)
    uids = [v.uid for v in hits]
    highest = max((v.modseq for v in hits), default=0)
    if a.ret is None:
        nums = _numbers(s, uids, cmd.uid)
        tail = b" (MODSEQ %d)" % highest if modseq and nums else b""
        s.write(b"* SEARCH" + b"".join(b" %d" % n for n in nums) + tail + b"\r\n")
        return Done("SEARCH completed")
    ret = set(a.ret) or {"ALL"}
    if "SAVE" in ret:
        # RFC 5182 §2.4: with MIN and/or MAX only, just those are saved.
        if ret & {"MIN", "MAX"} and not ret & {"ALL", "COUNT"}:
            saved = []
            if uids and "MIN" in ret:
                saved.append(uids[0])
            if uids and "MAX" in ret:
                saved.append(uids[-1])
            sel.saved = sorted(set(saved))
        else:
            sel.saved = list(uids)
        sel.saved_set = True
        ret.discard("SAVE")
        if not ret:
            return Done("SEARCH completed, result saved")  # RFC 5182 §2.1: no ESEARCH response
    nums = _numbers(s, uids, cmd.uid)
    parts = [b'* ESEARCH (TAG "' + cmd.tag.encode() + b'")']
    if cmd.uid:
        parts.append(b"UID")
    if nums and "MIN" in ret:
        parts.append(b"MIN %d" % nums[0])
    if nums and "MAX" in ret:
        parts.append(b"MAX %d" % nums[-1])
    if "COUNT" in ret:
        parts.append(b"COUNT %d" % len(nums))
    if nums and "ALL" in ret:
        parts.append(b"ALL " + seqset(sorted(nums)))
    if modseq and nums:
        parts.append(b"MODSEQ %d" % highest)  # RFC 7162 §3.1.5 / RFC 4731 §3.2
    s.write(b" ".join(parts) + b"\r\n")
    return Done("SEARCH completed")


@command("SORT", ONLY_SELECTED, uid=True, expunge_ok=False)
async def sort(s: Session, cmd: Any) -> Done:
    sel = s.sel
    assert sel is not None
    a = cmd.args

    def run() -> list[int]:
        from services.access.imapmsg import sort as msg_sort

        hits, _ = evaluate(sel, a.key)
        return list(msg_sort(hits, a.criteria))

    uids = await storeio.run(run)
    nums = _numbers(s, uids, cmd.uid)
    s.write(b"* SORT" + b"".join(b" %d" % n for n in nums) + b"\r\n")
    return Done("SORT completed")


def _renumber(tree: Any, to_seq: Any) -> Any:
    if isinstance(tree, int):
        return to_seq(tree)
    return type(tree)(_renumber(t, to_seq) for t in tree)


@command("THREAD", ONLY_SELECTED, uid=True, expunge_ok=False)
async def thread(s: Session, cmd: Any) -> Done:
    sel = s.sel
    assert sel is not None
    a = cmd.args

    def run() -> Any:
        from services.access.imapmsg import thread as msg_thread

        hits, _ = evaluate(sel, a.key)
        return msg_thread(hits, a.algorithm)

    tree = await storeio.run(run)
    if not cmd.uid:
        tree = _renumber(tree, lambda u: sel.seq_of(u) or 0)
    from services.access.imapmsg import serialize_thread

    out = serialize_thread(tree)
    if isinstance(out, str):
        out = out.encode()
    s.write(b"* THREAD " + out + b"\r\n" if out else b"* THREAD\r\n")
    return Done("THREAD completed")
