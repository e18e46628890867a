"""APPEND with MULTIAPPEND (RFC 3502), CATENATE (RFC 4469), APPENDLIMIT (RFC 7889) and
APPENDUID (RFC 4315 §3)."""

from __future__ import annotations

import re
import urllib.parse
from typing import Any

from services.access.imap import quota, storeio
from services.access.imap.dispatch import AUTH_OR_SELECTED, command
from services.access.imap.errors import Done, No
from services.access.imap.mailboxes import is_outbox, mailbox_arg, open_mailbox
from services.access.imap.selected import seqset
from services.access.imap.session import Session
from services.access.imapproto.types import Section

# RFC 5092 IMAP URL to one of the user's own messages: [imap://authority]/mailbox[;UIDVALIDITY=n]/;UID=n
# [/;SECTION=s]; or relative to the selected mailbox: ;UID=n... (RFC 4469 §5).
_URL = re.compile(r"(?:imap://[^/]*)?(?:/(?P<mbox>[^;]*?)(?:;UIDVALIDITY=(?P<validity>\d+))?/)?;UID=(?P<uid>\d+)"
                  r"(?:/;SECTION=(?P<section>[A-Za-z0-9.]+))?(?:/;PARTIAL=(?P<partial>\d+(?:\.\d+)?))?$",
                  re.IGNORECASE)


def _section(spec: str) -> Section:
    parts: list[int] = []
    text = None
    for token in spec.split("."):
        if token.isdigit() and text is None:
            parts.append(int(token))
        else:
            text = ((text + ".") if text else "") + token.upper()
    if text not in (None, "HEADER", "TEXT", "MIME"):
        raise ValueError(spec)
    return Section(part=tuple(parts), text=text)  # type: ignore[arg-type]


async def _resolve_url(s: Session, url: str) -> bytes:
    """The bytes an IMAP URL names (only the user's own messages; RFC 4469 §5: else NO [BADURL])."""
    from appliance.mailstore import MailstoreError
    from services.access.imapmsg import section as msg_section

    m = _URL.match(url)
    if m is None:
        raise No(f"cannot use URL {url}", f"BADURL {url}")
    if m.group("mbox") is not None:
        name = mailbox_arg(urllib.parse.unquote(m.group("mbox")))
    elif s.sel is not None:
        name = s.sel.name
    else:
        raise No("a relative URL needs a selected mailbox", f"BADURL {url}")
    try:
        mbox = await storeio.run(s.store.mailbox, name)
        if m.group("validity") and int(m.group("validity")) != mbox.uidvalidity:
            raise No("UIDVALIDITY does not match", f"BADURL {url}")
        data = await storeio.run(mbox.read, int(m.group("uid")))
    except MailstoreError:
        raise No(f"no such message: {url}", f"BADURL {url}") from None
    if m.group("section"):
        try:
            data = msg_section(data, _section(m.group("section"))) or b""
        except ValueError:
            raise No(f"bad section in {url}", f"BADURL {url}") from None
    if m.group("partial"):
        origin, _, length = m.group("partial").partition(".")
        data = data[int(origin):int(origin) + int(length)] if length else data[int(origin):]
    return data


async def message_bytes(s: Session, msg: Any) -> bytes:
    if msg.catenate is None:
        return msg.data or b""
    out = bytearray()
    for part in msg.catenate:
        out += part.value if part.kind == "TEXT" else await _resolve_url(s, str(part.value))
        if len(out) > s.append_limit:
            raise No(f"message over the APPENDLIMIT of {s.append_limit}", "TOOBIG")
    return bytes(out)


def _append_all(mbox: Any, messages: list[tuple[bytes, tuple[str, ...], float | None]]) -> list[int]:
    """All or nothing (RFC 3502 §3: MULTIAPPEND is atomic)."""
    uids: list[int] = []
    try:
        for data, flags, when in messages:
            uids.append(mbox.append(data, flags, when))
    except BaseException:
        if uids:
            mbox.expunge(uids)
        raise
    return uids


async def prepared(s: Session, cmd: Any) -> list[tuple[bytes, tuple[str, ...], float | None]]:
    out = []
    for msg in cmd.args.messages:
        data = await message_bytes(s, msg)
        if len(data) > s.append_limit:
            # RFC 7889 §4 / RFC 4469 §6: the message is over the advertised limit.
            raise No(f"message over the APPENDLIMIT of {s.append_limit}", "TOOBIG")
        if getattr(msg, "binary", False) and data.count(b"\n") != data.count(b"\r\n"):
            # RFC 3516 §4.4: binary content the store cannot keep unchanged (it serves every bare LF
            # as CRLF) MUST be refused with NO [UNKNOWN-CTE], never stored altered.
            raise No("binary content with a bare LF cannot be stored unchanged", "UNKNOWN-CTE")
        flags = tuple(f for f in msg.flags if f.lower() != "\\recent")
        when = msg.date.timestamp() if msg.date is not None else None
        out.append((data, flags, when))
    return out


@command("APPEND", AUTH_OR_SELECTED)
async def append(s: Session, cmd: Any) -> Done:
    name = mailbox_arg(cmd.args.mailbox)
    messages = await prepared(s, cmd)
    if is_outbox(s, name):
        from services.access.imap.cmd_send import outbox_append

        return await outbox_append(s, name, messages)
    mbox = await open_mailbox(s, name, "TRYCREATE")  # RFC 9051 §6.3.12
    await quota.check(s, sum(len(m[0]) for m in messages), len(messages))
    uids = await storeio.write(s.store.root, _append_all, mbox, messages)
    s.notify_others(name)
    if s.sel is not None and s.sel.name == name:
        s.sel.dirty = True  # RFC 9051 §6.3.12: the new message is reported (EXISTS) before the OK
    return Done("APPEND completed", f"APPENDUID {mbox.uidvalidity} {seqset(uids).decode()}")


__all__ = ["append", "prepared"]
