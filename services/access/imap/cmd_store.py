"""STORE and UID STORE (RFC 9051 §6.4.6) with UNCHANGEDSINCE (RFC 7162 §3.1.3).

One store call for the whole set (O(k) in the index, one transaction). The other
sessions on the mailbox hear of it through the hub (issue 13: flag changes made by one
session reach the others).
"""

from __future__ import annotations

from typing import Any

from services.access.imap import storeio
from services.access.imap.cmd_select import flags_responses
from services.access.imap.dispatch import ONLY_SELECTED, command
from services.access.imap.errors import Bad, Done
from services.access.imap.selected import seqset
from services.access.imap.session import Session


def _store(mbox: Any, uids: list[int], action: str, flags: tuple[str, ...], unchangedsince: int | None,
           report: bool) -> tuple[Any, list[Any]]:
    result = mbox.store(uids, action, flags, unchangedsince)
    failed = set(result.failed)
    records = mbox.records([u for u in uids if u not in failed]) if report else list(result.changed)
    return result, records


@command("STORE", ONLY_SELECTED, uid=True, expunge_ok=False)
async def store(s: Session, cmd: Any) -> Done:
    sel = s.sel
    assert sel is not None
    a = cmd.args
    if sel.readonly:
        # As Dovecot answers (the differential compares): a STORE can never work in EXAMINE.
        raise Bad("Mailbox is read-only")
    if a.unchangedsince is not None:
        s.condstore = True  # RFC 7162 §3.1: a CONDSTORE-enabling command
    # RFC 9051 §2.3.2: \Recent is session state, never stored by a client.
    flags = tuple(f for f in a.flags if f.lower() != "\\recent")
    uids = sel.live(sel.resolve(a.sequence, cmd.uid))
    new_keywords = {f for f in flags if not f.startswith("\\")} - sel.keywords
    if not uids:
        return Done("STORE completed")
    result, records = await storeio.write(s.store.root, _store, sel.mailbox, uids, a.action, flags,
                                          a.unchangedsince, not a.silent)
    if s.sel is not sel:
        return Done("STORE completed")
    if new_keywords and a.action != "remove":
        # RFC 9051 §7.3.5: a new keyword changes the mailbox's FLAGS; say so before the FETCHes.
        sel.keywords |= new_keywords
        flags_responses(s, sel)
    for rec in result.changed:
        sel.own[rec.uid] = rec.modseq
    if not a.silent:
        for rec in records:
            seq = sel.seq_of(rec.uid)
            if seq is not None:
                s.write(sel.fetch_flags(seq, rec, uid=cmd.uid or s.qresync, modseq=s.condstore))
    elif s.condstore:
        # RFC 7162 §3.1.3: even with .SILENT the new MODSEQ of each changed message is reported.
        for rec in result.changed:
            seq = sel.seq_of(rec.uid)
            if seq is not None:
                s.write(b"* %d FETCH (%sMODSEQ (%d))\r\n" % (seq, b"UID %d " % rec.uid if cmd.uid or s.qresync
                                                             else b"",
                                                             rec.modseq))
    if result.changed:
        s.notify_others()
    if result.failed:
        # RFC 7162 §3.1.3: the messages whose MODSEQ was above UNCHANGEDSINCE.
        failed = sorted(result.failed)
        nums = failed if cmd.uid else sorted(n for n in (sel.seq_of(u) for u in failed) if n is not None)
        return Done("Conditional STORE failed for some messages", "MODIFIED " + seqset(nums).decode())
    return Done("STORE completed")
