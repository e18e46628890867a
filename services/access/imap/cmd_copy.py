"""COPY, MOVE (RFC 6851), EXPUNGE and UID EXPUNGE (RFC 4315 §2.1), with COPYUID (RFC 4315 §3)."""

from __future__ import annotations

from typing import Any

from services.access.imap import storeio
from services.access.imap.dispatch import ONLY_SELECTED, command
from services.access.imap.errors import Done, No
from services.access.imap.mailboxes import is_outbox, mailbox_arg, open_mailbox
from services.access.imap.selected import seqset
from services.access.imap.session import Session


async def _copy(s: Session, cmd: Any, move: bool) -> Done:
    sel = s.sel
    assert sel is not None
    verb = "MOVE" if move else "COPY"
    if move and sel.readonly:
        raise No("the mailbox is read-only (EXAMINE)", "READ-ONLY")
    name = mailbox_arg(cmd.args.mailbox)
    uids = sel.live(sel.resolve(cmd.args.sequence, cmd.uid))
    if is_outbox(s, name):
        from services.access.imap.cmd_send import outbox_copy

        return await outbox_copy(s, name, uids, move)
    # RFC 9051 §6.4.7: a missing destination is NO [TRYCREATE].
    dest = await open_mailbox(s, name, "TRYCREATE")
    if not uids:
        return Done(f"{verb} completed (no messages)")
    # The store checks the quota (NO [OVERQUOTA], RFC 9208 §4.3) before linking anything.
    op = sel.mailbox.move_to if move else sel.mailbox.copy_to
    pairs = await storeio.write(s.store.root, op, uids, dest)
    src = [p[0] for p in pairs]
    dst = [p[1] for p in pairs]
    code = f"COPYUID {dest.uidvalidity} {seqset(src).decode()} {seqset(dst).decode()}" if pairs else None
    s.notify_others(name)
    if name == sel.name:
        sel.dirty = True  # the copies are new messages here too: EXISTS before the tagged OK
    if move:
        # RFC 6851 §4.3: COPYUID in an untagged OK, before the EXPUNGEs.
        if code:
            s.untagged(f"OK [{code}] Moved")
        for line in sel.remove(src, s.qresync):
            s.write(line)
        s.notify_others()
        return await highestmodseq_code(s, "MOVE completed")
    return Done("COPY completed", code)


async def highestmodseq_code(s: Session, done: str) -> Done:
    """RFC 7162 §3.2.10: with QRESYNC on, the tagged OK of EXPUNGE/MOVE carries HIGHESTMODSEQ."""
    if not s.qresync or s.sel is None:
        return Done(done)
    st = await storeio.run(s.store.status, s.sel.name)
    return Done(done, f"HIGHESTMODSEQ {st.highestmodseq}")


@command("COPY", ONLY_SELECTED, uid=True)
async def copy(s: Session, cmd: Any) -> Done:
    return await _copy(s, cmd, False)


@command("MOVE", ONLY_SELECTED, uid=True)
async def move(s: Session, cmd: Any) -> Done:
    return await _copy(s, cmd, True)


def _expunge(mbox: Any, uids: list[int] | None) -> list[int]:
    if uids is None:
        return list(mbox.expunge(None))
    # RFC 4315 §2.1: only the messages of the set that have \Deleted.
    doomed = [r.uid for r in mbox.records(uids) if "\\Deleted" in r.flags]
    return list(mbox.expunge(doomed)) if doomed else []


@command("EXPUNGE", ONLY_SELECTED, uid=True)
async def expunge(s: Session, cmd: Any) -> Done:
    sel = s.sel
    assert sel is not None
    if sel.readonly:
        raise No("the mailbox is read-only (EXAMINE)", "READ-ONLY")
    uids = sel.resolve(cmd.args.sequence, True) if cmd.uid else None
    removed = await storeio.write(s.store.root, _expunge, sel.mailbox, uids)
    if s.sel is sel:
        for line in sel.remove([u for u in removed if sel.seq_of(u) is not None], s.qresync):
            s.write(line)
    if removed:
        s.notify_others()
    return await highestmodseq_code(s, "EXPUNGE completed")
