"""SEARCH (RFC 9051 §6.4.4) with ESEARCH (RFC 4731), SEARCHRES (RFC 5182) and MODSEQ
(RFC 7162 §3.1.5); SORT and THREAD (RFC 5256). Evaluation is C2's (services.access.imapmsg)
over views of the index records, in a worker thread."""

from __future__ import annotations

from typing import Any

from services.access.imap import storeio
from services.access.imap.dispatch import ONLY_SELECTED, command
from services.access.imap.errors import Done
from services.access.imap.searchviews import evaluate, flag_search, flag_terms, has_modseq
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
    terms = None if modseq else flag_terms(a.key)
    if terms is not None and cmd.uid and a.ret is None and not s.rev2:
        # The common case (a client's UID SEARCH UNSEEN): the answer's text comes from SQLite.
        text = await storeio.run(flag_search, sel, *terms, text=True)
        s.write(b"* SEARCH" + (b" " + text if text else b"") + b"\r\n")
        return Done("SEARCH completed")
    if terms is not None:
        uids = list(await storeio.run(flag_search, sel, *terms))
        highest = 0
    else:
        hits, _ = await storeio.run(evaluate, sel, a.key)
        uids = [v.uid for v in hits]
        highest = max((v.modseq for v in hits), default=0)
    # RFC 9051 §6.4.4 / §7.1: after ENABLE IMAP4rev2 every SEARCH answers ESEARCH (RETURN () = ALL).
    if a.ret is None and not s.rev2:
        nums = _numbers(s, uids, cmd.uid)
        tail = b" (MODSEQ %d)" % highest if modseq and nums else b""
        s.write(b"* SEARCH" + (b" " + " ".join(map(str, nums)).encode() if nums else b"") + tail + b"\r\n")
        return Done("SEARCH completed")
    ret = set(a.ret or ()) or {"ALL"}
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
        from services.access.imapmsg.sort import sort as msg_sort

        hits, _ = evaluate(sel, a.key)
        return list(msg_sort(hits, a.criteria))

    uids = await storeio.run(run)
    nums = _numbers(s, uids, cmd.uid)
    s.write(b"* SORT" + b"".join(b" %d" % n for n in nums) + b"\r\n")
    return Done("SORT completed")


def _renumber(tree: Any, to_seq: Any) -> Any:
    """UIDs -> sequence numbers in a nested thread tree, iteratively (a 10,000-deep reply chain
    must not hit Python's recursion limit)."""
    if isinstance(tree, int):
        return to_seq(tree)
    order: list[Any] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        order.append(node)
        stack.extend(x for x in node if not isinstance(x, int))
    done: dict[int, Any] = {}
    for node in reversed(order):  # children before parents
        done[id(node)] = type(node)(to_seq(x) if isinstance(x, int) else done[id(x)] for x in node)
    return done[id(tree)]


@command("THREAD", ONLY_SELECTED, uid=True, expunge_ok=False)
async def thread(s: Session, cmd: Any) -> Done:
    sel = s.sel
    assert sel is not None
    a = cmd.args

    def run() -> Any:
        from services.access.imapmsg.thread import thread as msg_thread

        hits, _ = evaluate(sel, a.key)
        return msg_thread(hits, a.algorithm)

    tree = await storeio.run(run)
    if not cmd.uid:
        tree = _renumber(tree, lambda u: sel.seq_of(u) or 0)
    from services.access.imapmsg.thread import serialize_thread

    out = serialize_thread(tree)
    if isinstance(out, str):
        out = out.encode()
    s.write(b"* THREAD " + out + b"\r\n" if out else b"* THREAD\r\n")
    return Done("THREAD completed")
