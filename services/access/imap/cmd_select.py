"""SELECT, EXAMINE (with CONDSTORE and QRESYNC parameters), CLOSE, UNSELECT.

RFC 9051 §6.3.2 / RFC 3501 §6.3.1: the untagged data of SELECT; RFC 7162 §3.1.2.1
HIGHESTMODSEQ, §3.2.5 the QRESYNC parameter (VANISHED (EARLIER) and changed flags),
§3.2.11 [CLOSED]; RFC 3691 UNSELECT.
"""

from __future__ import annotations

from typing import Any

from services.access.imap import storeio
from services.access.imap.dispatch import AUTH_OR_SELECTED, ONLY_SELECTED, command
from services.access.imap.errors import Bad, Done, No
from services.access.imap.mailboxes import mailbox_arg, open_mailbox
from services.access.imap.selected import Selected, flag_list, seqset
from services.access.imap.session import Session

SYSTEM_FLAGS = ["\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft"]


def _open(mbox: Any, readonly: bool, qresync: Any) -> tuple[Any, list[int], list[str], int | None, Any]:
    """In a worker thread: everything SELECT reports."""
    mbox.sync()
    state = mbox.state(shared=True)  # read-only: Selected copies it before changing it
    recent = [] if readonly else list(mbox.claim_recent())
    keywords = list(mbox.keywords())
    unseen = mbox.unseen_first()
    resync = None
    if qresync is not None and qresync.uidvalidity == mbox.uidvalidity:
        resync = mbox.changes_since(qresync.modseq)
    return state, recent, keywords, unseen, resync


def flags_responses(s: Session, sel: Selected) -> None:
    flags = [*SYSTEM_FLAGS, *sorted(sel.keywords)]
    s.untagged(b"FLAGS " + flag_list(flags))
    # RFC 9051 §7.1: PERMANENTFLAGS; \* says new keywords may be created. Read-only: none.
    perm = [*flags, "\\*"] if not sel.readonly else []
    s.untagged(b"OK [PERMANENTFLAGS " + flag_list(perm) + b"] Flags permitted")


async def _select(s: Session, cmd: Any, readonly: bool) -> Done:
    a = cmd.args
    if a.qresync is not None and not s.qresync:
        # RFC 7162 §3.2.5: QRESYNC parameter without ENABLE QRESYNC is an error.
        raise Bad("QRESYNC is not enabled")
    if s.sel is not None:
        # RFC 9051 §6.3.2: the current mailbox is deselected first (no expunge), even if this
        # SELECT fails; RFC 7162 §3.2.11 / RFC 9051 §7.1 say so with [CLOSED] (sent always, as
        # Dovecot does: an IMAP4rev1 client ignores a response code it does not know).
        s.untagged("OK [CLOSED] Previous mailbox closed")
        s.select(None)
    if a.condstore:
        s.condstore = True  # RFC 7162 §3.1.8
    name = mailbox_arg(a.mailbox)
    mbox = await open_mailbox(s, name)
    state, recent, keywords, unseen, resync = await storeio.run(_open, mbox, readonly, a.qresync)
    # RFC 9051 Appendix E: no \Recent for an IMAP4rev2 session (the claim still uses them up).
    sel = Selected(mbox, name, readonly, state, () if s.rev2 else recent)
    sel.keywords = set(keywords)
    flags_responses(s, sel)
    s.untagged(b"%d EXISTS" % sel.exists())
    if not s.rev2:
        s.untagged(b"%d RECENT" % len(sel.recent))
        if unseen is not None and sel.seq_of(unseen) is not None:
            s.untagged(b"OK [UNSEEN %d] First unseen" % sel.seq_of(unseen))  # type: ignore[str-format]
    s.untagged(b"OK [UIDVALIDITY %d] UIDs valid" % sel.uidvalidity)
    s.untagged(b"OK [UIDNEXT %d] Predicted next UID" % sel.uidnext)
    # RFC 7162 §3.1.2.1: every SELECT/EXAMINE of a mailbox with persistent MODSEQs says it.
    s.untagged(b"OK [HIGHESTMODSEQ %d] Highest" % sel.modseq)
    if s.rev2:
        from services.access.imap.cmd_mailbox import list_line

        attrs = await storeio.run(s.store.attributes, name)
        s.write(list_line(s, "LIST", attrs, name))
    if resync is not None:
        _qresync(s, sel, a.qresync, resync)
    s.select(sel)
    mode = "READ-ONLY" if readonly else "READ-WRITE"
    return Done(f"{cmd.name} completed", mode)


def _qresync(s: Session, sel: Selected, params: Any, resync: Any) -> None:
    """RFC 7162 §3.2.5.2: VANISHED (EARLIER) for what the client knew and is gone, then
    FETCH (UID FLAGS MODSEQ) for what changed since its MODSEQ."""
    changed, expunged = resync
    known = params.known_uids
    largest = sel.uids[-1] if sel.uids else 0
    gone = sorted(u for u in expunged if sel.seq_of(u) is None
                  and (known is None or known.contains(u, max(largest, u))))
    if gone:
        s.write(b"* VANISHED (EARLIER) " + seqset(gone) + b"\r\n")
    for rec in changed:
        seq = sel.seq_of(rec.uid)
        if seq is not None and (known is None or known.contains(rec.uid, largest)):
            s.write(sel.fetch_flags(seq, rec, uid=True, modseq=True))


@command("SELECT", AUTH_OR_SELECTED)
async def select(s: Session, cmd: Any) -> Done:
    return await _select(s, cmd, False)


@command("EXAMINE", AUTH_OR_SELECTED)
async def examine(s: Session, cmd: Any) -> Done:
    return await _select(s, cmd, True)


@command("CLOSE", ONLY_SELECTED)
async def close(s: Session, cmd: Any) -> Done:
    sel = s.sel
    assert sel is not None
    if not sel.readonly:
        # RFC 9051 §6.4.1: CLOSE silently expunges \Deleted messages (no EXPUNGE responses).
        expunged = await storeio.write(s.store.root, sel.mailbox.expunge, None)
        if expunged:
            s.notify_others()
    s.select(None)
    return Done("CLOSE completed")


@command("UNSELECT", ONLY_SELECTED)
async def unselect(s: Session, cmd: Any) -> Done:
    s.select(None)  # RFC 3691: like CLOSE without the expunge
    return Done("UNSELECT completed")


__all__ = ["No", "flags_responses"]
