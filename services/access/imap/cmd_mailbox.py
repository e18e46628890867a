"""Mailbox commands of the authenticated state: LIST (RFC 5258 LIST-EXTENDED, RFC 5819
LIST-STATUS, RFC 6154 SPECIAL-USE), LSUB, CREATE, DELETE, RENAME, SUBSCRIBE, UNSUBSCRIBE,
STATUS (RFC 8438 STATUS=SIZE, RFC 7162 HIGHESTMODSEQ, RFC 7889 APPENDLIMIT), NAMESPACE
(RFC 2342) and QUOTA (RFC 9208)."""

from __future__ import annotations

import re
from typing import Any

from services.access.imap import storeio
from services.access.imap.dispatch import AUTH_OR_SELECTED, command
from services.access.imap.errors import Bad, Done, No
from services.access.imap.mailboxes import DELIMITER, mailbox_arg, wire_name
from services.access.imap.session import Session

SPECIAL_USE_ATTRS = frozenset({"\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash"})
STATUS_FIELDS = {"MESSAGES": "messages", "RECENT": "recent", "UIDNEXT": "uidnext", "UIDVALIDITY": "uidvalidity",
                 "UNSEEN": "unseen", "DELETED": "deleted", "SIZE": "size", "HIGHESTMODSEQ": "highestmodseq"}


def _pattern(reference: str, pattern: str) -> re.Pattern[str]:
    """RFC 9051 §6.3.9: "*" matches anything, "%" anything but the delimiter."""
    full = reference + pattern
    rx = "".join(".*" if c == "*" else f"[^{re.escape(DELIMITER)}]*" if c == "%" else re.escape(c) for c in full)
    return re.compile(rx, re.DOTALL)


def _matches(rx: re.Pattern[str], name: str) -> bool:
    if name == "INBOX":  # INBOX is case-insensitive (RFC 9051 §5.1)
        return re.fullmatch(rx.pattern, name, re.IGNORECASE | re.DOTALL) is not None
    return rx.fullmatch(name) is not None


def list_line(s: Session, verb: str, attrs: list[str], name: str, extra: bytes = b"") -> bytes:
    return (f"* {verb} (".encode() + " ".join(attrs).encode() + b') "' + DELIMITER.encode() + b'" '
            + wire_name(s, name) + extra + b"\r\n")


def _status_values(store: Any, name: str, items: tuple[str, ...], append_limit: int) -> list[tuple[str, int]]:
    st = store.status(name)
    out = []
    for item in items:
        if item == "APPENDLIMIT":
            out.append((item, append_limit))
        else:
            out.append((item, int(getattr(st, STATUS_FIELDS[item]))))
    return out


def status_line(s: Session, name: str, values: list[tuple[str, int]]) -> bytes:
    body = " ".join(f"{k} {v}" for k, v in values)
    return b"* STATUS " + wire_name(s, name) + b" (" + body.encode() + b")\r\n"


CHILD_ATTRS = frozenset({"\\HasChildren", "\\HasNoChildren"})


def _parents(names: set[str]) -> set[str]:
    return {n[:i] for n in names for i, ch in enumerate(n) if ch == DELIMITER}


def _gather(store: Any, a: Any, rxs: list[re.Pattern[str]], append_limit: int) -> list[tuple[str, list[str], bytes,
                                                                                                   Any]]:
    """In a worker thread: (name, attributes, extended data, status) for each LIST/LSUB answer.

    Hierarchy levels that are not mailboxes themselves (Maildir++ "Work.Projects" under
    "Work.Projects.Alpha") are listed too: \\Noselect (RFC 3501 §6.3.8), or \\NonExistent with
    LIST-EXTENDED (RFC 5258 §3.4). With LIST-EXTENDED syntax only the requested attributes
    are returned (RETURN CHILDREN / SPECIAL-USE, RFC 5258 §4, RFC 6154 §2), as Dovecot does.
    """
    names = store.names()
    existing = set(names)
    subs = store.subscriptions()
    sel_sub = "SUBSCRIBED" in a.select_opts
    sel_special = "SPECIAL-USE" in a.select_opts
    ret_sub = sel_sub or "SUBSCRIBED" in a.return_opts
    want_children = not a.extended or "CHILDREN" in a.return_opts
    want_special = not a.extended or "SPECIAL-USE" in a.return_opts or sel_special
    if a.lsub or sel_sub:
        candidates = set(subs)
    else:
        candidates = existing | _parents(existing)
    out = []
    seen: set[str] = set()
    for name in sorted(candidates, key=lambda n: (n != "INBOX", n)):
        if not any(_matches(rx, name) for rx in rxs):
            continue
        if name in existing:
            attrs = list(store.attributes(name))
            if a.lsub:
                attrs = [x for x in attrs if x not in CHILD_ATTRS]  # LSUB: special use only (as Dovecot)
            else:
                attrs = [x for x in attrs if (want_children if x in CHILD_ATTRS else want_special)]
        elif a.lsub:
            attrs = []  # subscribed, but not (any more) a mailbox
        elif name in subs and name not in _parents(existing):
            attrs = ["\\NonExistent"]  # RFC 5258 §3.4: subscribed, but gone
        elif a.extended:
            attrs = ["\\NonExistent"] + (["\\HasChildren"] if want_children else [])
        else:
            attrs = ["\\Noselect", "\\HasChildren"]
        if sel_special and not any(x in attrs for x in SPECIAL_USE_ATTRS):
            continue
        if ret_sub and name in subs:
            attrs.append("\\Subscribed")
        status = None
        if a.status_items and name in existing:
            status = _status_values(store, name, a.status_items, append_limit)
        out.append((name, attrs, b"", status))
        seen.add(name)
    pct = [_pattern(a.reference, p) for p in a.patterns if "%" in p]
    if a.lsub and pct:
        # RFC 3501 §6.3.9: with "%", a level above a subscription that is not subscribed
        # itself is returned with \\Noselect.
        for name in sorted(_parents(subs)):
            if name not in seen and name not in subs and any(_matches(rx, name) for rx in pct):
                out.append((name, ["\\Noselect"], b"", None))
                seen.add(name)
    if sel_sub and "RECURSIVEMATCH" in a.select_opts:
        # RFC 5258 §3.5: a parent that does not match SUBSCRIBED itself but has a subscribed
        # descendant is listed with CHILDINFO ("SUBSCRIBED"), even if it does not exist.
        for name in sorted(_parents(subs)):
            if name in seen or not any(_matches(rx, name) for rx in rxs):
                continue
            attrs = [x for x in store.attributes(name) if x not in CHILD_ATTRS] if name in existing \
                else ["\\NonExistent"]
            out.append((name, attrs, b' ("CHILDINFO" ("SUBSCRIBED"))', None))
    return out


async def _list(s: Session, cmd: Any) -> Done:
    a = cmd.args
    verb = "LSUB" if a.lsub else "LIST"
    if not a.extended and len(a.patterns) == 1 and a.patterns[0] == "":
        # RFC 3501 §6.3.8: an empty pattern asks for the delimiter and the root name of the
        # reference ("#news.comp" -> "#news."; none -> "").
        root = a.reference[:a.reference.index(DELIMITER) + 1] if DELIMITER in a.reference else ""
        s.write(f'* {verb} (\\Noselect) "{DELIMITER}" '.encode() + wire_name(s, root) + b"\r\n")
        return Done(f"{verb} completed")
    if "RECURSIVEMATCH" in a.select_opts and len(a.select_opts) == 1:
        raise Bad("RECURSIVEMATCH needs another selection option")  # RFC 5258 §3
    if a.status_items:
        s.condstore = s.condstore or "HIGHESTMODSEQ" in a.status_items
    rxs = [_pattern(a.reference, p) for p in a.patterns if p != ""]
    rows = await storeio.run(_gather, s.store, a, rxs, s.append_limit)
    for name, attrs, extra, status in rows:
        s.write(list_line(s, verb, attrs, name, extra))
        if status is not None:
            s.write(status_line(s, name, status))  # RFC 5819 §2: after its LIST
    return Done(f"{verb} completed")


@command("LIST", AUTH_OR_SELECTED)
async def list_(s: Session, cmd: Any) -> Done:
    return await _list(s, cmd)


@command("LSUB", AUTH_OR_SELECTED)
async def lsub(s: Session, cmd: Any) -> Done:
    return await _list(s, cmd)


@command("NAMESPACE", AUTH_OR_SELECTED)
async def namespace(s: Session, cmd: Any) -> Done:
    s.untagged(f'NAMESPACE (("" "{DELIMITER}")) NIL NIL')
    return Done("NAMESPACE completed")


@command("STATUS", AUTH_OR_SELECTED)
async def status(s: Session, cmd: Any) -> Done:
    a = cmd.args
    name = mailbox_arg(a.mailbox)
    if "HIGHESTMODSEQ" in a.items:
        s.condstore = True  # RFC 7162 §3.1: a CONDSTORE-enabling command
    from appliance.mailstore import MailstoreError

    try:
        values = await storeio.run(_status_values, s.store, name, a.items, s.append_limit)
    except MailstoreError as exc:
        raise No(str(exc), getattr(exc, "code", None) or "NONEXISTENT") from None
    if s.sel is not None and s.sel.name == name:
        # The messages this session holds as \Recent are recent too (RFC 3501 §6.3.10, as Dovecot).
        values = [(k, v + len(s.sel.recent)) if k == "RECENT" else (k, v) for k, v in values]
    s.write(status_line(s, name, values))
    return Done("STATUS completed")


@command("CREATE", AUTH_OR_SELECTED)
async def create(s: Session, cmd: Any) -> Done:
    a = cmd.args
    # RFC 9051 §6.3.4: a trailing delimiter says the client intends children; same mailbox.
    name = mailbox_arg(a.mailbox.rstrip(DELIMITER) if a.mailbox != DELIMITER else a.mailbox)
    if name == "INBOX":
        raise No("INBOX already exists", "ALREADYEXISTS")
    if len(a.special_use) > 1:
        raise No("one special use per mailbox", "USEATTR")  # RFC 6154 §3
    use = a.special_use[0] if a.special_use else None
    await storeio.write(s.store.root, s.store.create, name, use)
    return Done("CREATE completed")


@command("DELETE", AUTH_OR_SELECTED)
async def delete(s: Session, cmd: Any) -> Done:
    name = mailbox_arg(cmd.args.mailbox)
    if name == "INBOX":
        raise No("INBOX cannot be deleted", "CANNOT")  # RFC 9051 §6.3.5
    await storeio.write(s.store.root, s.store.delete, name)
    return Done("DELETE completed")


@command("RENAME", AUTH_OR_SELECTED)
async def rename(s: Session, cmd: Any) -> Done:
    await storeio.write(s.store.root, s.store.rename, mailbox_arg(cmd.args.old), mailbox_arg(cmd.args.new))
    return Done("RENAME completed")


@command("SUBSCRIBE", AUTH_OR_SELECTED)
async def subscribe(s: Session, cmd: Any) -> Done:
    await storeio.write(s.store.root, s.store.subscribe, mailbox_arg(cmd.args.mailbox), True)
    return Done("SUBSCRIBE completed")


@command("UNSUBSCRIBE", AUTH_OR_SELECTED)
async def unsubscribe(s: Session, cmd: Any) -> Done:
    await storeio.write(s.store.root, s.store.subscribe, mailbox_arg(cmd.args.mailbox), False)
    return Done("UNSUBSCRIBE completed")


# --- QUOTA (RFC 9208): one root, "", for the whole account ----------------------------------

def _quota_line(usage: Any, limits: Any) -> bytes:
    parts = []
    storage = getattr(limits, "storage", 0)
    messages = getattr(limits, "messages", 0)
    if storage:
        # RFC 9208 §5.1: STORAGE is in units of 1024 octets.
        parts.append(f"STORAGE {(usage.bytes + 1023) // 1024} {storage // 1024}")
    if messages:
        parts.append(f"MESSAGE {usage.messages} {messages}")
    return b'* QUOTA "" (' + " ".join(parts).encode() + b")\r\n"


async def _quota(s: Session) -> bytes:
    from services.access.imap.quota import account_limits

    usage = await storeio.run(s.store.usage)
    return _quota_line(usage, account_limits(s))


@command("GETQUOTAROOT", AUTH_OR_SELECTED)
async def getquotaroot(s: Session, cmd: Any) -> Done:
    name = mailbox_arg(cmd.args.mailbox)
    exists = await storeio.run(s.store.exists, name)
    if not exists:
        raise No(f"Mailbox doesn't exist: {name}", "NONEXISTENT")
    s.write(b"* QUOTAROOT " + wire_name(s, name) + b' ""\r\n')
    s.write(await _quota(s))
    return Done("GETQUOTAROOT completed")


@command("GETQUOTA", AUTH_OR_SELECTED)
async def getquota(s: Session, cmd: Any) -> Done:
    if cmd.args.root != "":
        raise No(f"no quota root {cmd.args.root}", "NONEXISTENT")
    s.write(await _quota(s))
    return Done("GETQUOTA completed")


@command("SETQUOTA", AUTH_OR_SELECTED)
async def setquota(s: Session, cmd: Any) -> Done:
    # RFC 9208 §4.3: quotas are set by the operator (`appliance user quota`), not by users.
    raise No("quotas are set by the administrator", "NOPERM")
