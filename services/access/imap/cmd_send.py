"""Sending from IMAP: UID SENDMAIL (draft-kundrat-imap-submit, X-DRAFT-I01-SENDMAIL) and the
Outbox folder whose APPENDed or COPYed messages are sent (Courier-IMAP's convention).

Sending goes through ``Backend.send`` (the relay's internal socket, so the relay's
policy, limits and From: checks apply). A message is stored in the Outbox only after the
relay accepted it, flagged $Submitted.
"""

from __future__ import annotations

from typing import Any

from services.access.imap import storeio
from services.access.imap.cmd_append import _append_all
from services.access.imap.dispatch import ONLY_SELECTED, command
from services.access.imap.errors import Done, No
from services.access.imap.mailboxes import open_mailbox
from services.access.imap.selected import seqset
from services.access.imap.session import Session

SUBMIT_PENDING = "$SubmitPending"
SUBMITTED = "$Submitted"


def _sent_flags(flags: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    return (*[f for f in flags if f.lower() not in (SUBMIT_PENDING.lower(), "\\recent")], SUBMITTED)


async def _send(s: Session, data: bytes, sender: str | None = None, recipients: list[str] | None = None) -> Any:
    reply = await s.backend.send(s.account.address, s.conn.client_ip, "IMAP", data, sender, recipients)
    return reply


async def outbox_append(s: Session, name: str, messages: list[tuple[bytes, tuple[str, ...], float | None]]) -> Done:
    if len(messages) != 1:
        raise No("Put exactly one message into the Outbox per command", "ALERT")
    data, flags, when = messages[0]
    reply = await _send(s, data)
    if not reply.ok:
        raise No(reply.text, "ALERT")  # the refusal is an ALERT the user sees
    mbox = await open_mailbox(s, name, "TRYCREATE")
    uids = await storeio.write(s.store.root, _append_all, mbox, [(data, _sent_flags(flags), when)])
    s.notify_others(name)
    queued = f" (queued as {reply.queue_id})" if reply.queue_id else ""
    return Done(f"APPEND completed{queued}", f"APPENDUID {mbox.uidvalidity} {seqset(uids).decode()}")


def _read_one(mbox: Any, uid: int) -> tuple[bytes, Any]:
    recs = mbox.records([uid])
    return mbox.read(uid), (recs[0] if recs else None)


async def outbox_copy(s: Session, name: str, uids: list[int], move: bool) -> Done:
    sel = s.sel
    assert sel is not None
    if len(uids) != 1:
        raise No("Put exactly one message into the Outbox per command", "ALERT")
    uid = uids[0]
    data, rec = await storeio.run(_read_one, sel.mailbox, uid)
    reply = await _send(s, data)
    if not reply.ok:
        raise No(reply.text, "ALERT")
    dest = await open_mailbox(s, name, "TRYCREATE")
    flags = _sent_flags(tuple(rec.flags) if rec else ())
    when = rec.internaldate if rec else None
    try:
        new = await storeio.write(s.store.root, _append_all, dest, [(data, flags, when)])
    except Exception as exc:
        raise No(f"sent, but not stored: {exc}", "SERVERBUG") from None
    s.notify_others(name)
    queued = f" (queued as {reply.queue_id})" if reply.queue_id else ""
    verb = "MOVE" if move else "COPY"
    code = f"COPYUID {dest.uidvalidity} {uid} {new[0]}"
    if move:
        await storeio.write(s.store.root, sel.mailbox.expunge, [uid])
        s.untagged(f"OK [{code}] Moved")
        for line in sel.remove([uid], s.qresync):
            s.write(line)
        s.notify_others()
        return Done(f"{verb} completed{queued}")
    return Done(f"{verb} completed{queued}", code)


def _mark_sent(mbox: Any, uid: int) -> list[Any]:
    mbox.store([uid], "remove", (SUBMIT_PENDING,))
    mbox.store([uid], "add", (SUBMITTED,))
    return mbox.records([uid])


@command("SENDMAIL", ONLY_SELECTED, uid=True, plain=False)
async def sendmail(s: Session, cmd: Any) -> Done:
    sel = s.sel
    assert sel is not None
    a = cmd.args
    if sel.seq_of(a.uid) is None or a.uid in sel.held:
        raise No("No message with that UID", "NONEXISTENT")
    data, rec = await storeio.run(_read_one, sel.mailbox, a.uid)
    if rec is None or SUBMIT_PENDING.lower() not in {f.lower() for f in rec.flags}:
        raise No(f"Message is not marked {SUBMIT_PENDING}", "CANNOT")
    reply = await _send(s, data, a.sender, list(a.recipients) or None)
    if not reply.ok:
        raise No(reply.text, reply.imap_code())
    recs = await storeio.write(s.store.root, _mark_sent, sel.mailbox, a.uid)
    if recs and s.sel is sel:
        rec = recs[0]
        sel.own[rec.uid] = rec.modseq
        seq = sel.seq_of(rec.uid)
        if seq is not None:
            s.write(sel.fetch_flags(seq, rec, uid=True, modseq=s.condstore))
    s.notify_others()
    return Done(f"SENDMAIL completed, queued as {reply.queue_id}")
