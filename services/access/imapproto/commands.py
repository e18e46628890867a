"""The command grammar (RFC 9051 §9, RFC 3501 §9 and the extensions) over an assembled command.

``parse_command`` returns a ``types.Command`` or an ``events.Bad`` carrying the tag when one
could be read.  FETCH, SEARCH, SORT and THREAD are in ``fetchsearch.py``.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from typing import Any

from . import fetchsearch
from .cursor import MAX_NUMBER64, TAG, Cursor
from .events import Bad
from .types import (
    Append,
    AppendMessage,
    Authenticate,
    CatenatePart,
    Command,
    Compress,
    CopyMove,
    Create,
    Enable,
    GetQuota,
    Id,
    ListCmd,
    Login,
    MailboxArg,
    NoArgs,
    ProtocolError,
    QresyncParams,
    Rename,
    Select,
    SetQuota,
    Status,
    Store,
    UidExpunge,
    UidSendmail,
)

_BASE64 = re.compile(rb"[A-Za-z0-9+/]+={0,2}")
STATUS_ATTS = frozenset({"MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "DELETED", "SIZE",
                         "HIGHESTMODSEQ", "APPENDLIMIT"})
LIST_SELECT_OPTS = frozenset({"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"})
LIST_RETURN_OPTS = frozenset({"SUBSCRIBED", "CHILDREN", "SPECIAL-USE", "STATUS"})
# RFC 6154 §2 (and RFC 8457 \Important): attribute names are case-insensitive; canonical spelling.
SPECIAL_USE = {a.upper(): a for a in ("\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent",
                                      "\\Trash", "\\Important")}
_STORE_ITEMS = {"FLAGS": ("set", False), "FLAGS.SILENT": ("set", True), "+FLAGS": ("add", False),
                "+FLAGS.SILENT": ("add", True), "-FLAGS": ("remove", False), "-FLAGS.SILENT": ("remove", True)}

Handler = Callable[[Cursor, bool], Any]


def parse_command(text: bytes, literals: dict[int, tuple[bytes, bool]], utf8: bool,
                  tag_hint: str | None = None) -> Command | Bad:
    """TEXT (the command's lines without CRLF) and LITERALS (octets by end offset of their marker)."""
    if not text:
        return Bad(None, "Empty command line")
    m = TAG.match(text)
    if not m or m.end() < len(text) and text[m.end():m.end() + 1] != b" ":
        return Bad(None, "Missing or invalid tag")
    tag = m.group().decode("ascii")
    if m.end() == len(text):
        return Bad(tag, "Missing command")
    c = Cursor(text, literals, utf8, tag)
    c.pos = m.end() + 1
    try:
        name = c.keyword()
        uid = name == "UID"
        if uid:
            c.sp()
            name = c.keyword()
            handler = UID_HANDLERS.get(name)
            if handler is None:
                return Bad(tag, f"UID {name} is not a command")
        else:
            handler = HANDLERS.get(name)
            if handler is None:
                return Bad(tag, "Unknown command")
        args = handler(c, uid)
        c.end()
    except ProtocolError as e:
        return Bad(tag, e.text, e.code)
    if c.refusal is not None:
        return Bad(tag, c.refusal.text, c.refusal.code, "NO")
    return Command(tag, name, args, uid)


# ---- commands without arguments and the simple ones -------------------------------------------

def _noargs(c: Cursor, uid: bool) -> NoArgs:
    return NoArgs()


def _authenticate(c: Cursor, uid: bool) -> Authenticate:
    """AUTHENTICATE SP auth-type [SP (base64 / "=")] (RFC 9051 §6.2.2, RFC 4959 SASL-IR)."""
    c.sp()
    mech = c.keyword()
    initial = None
    if c.try_sp():
        if c.try_char(b"="):
            initial = b""
        else:
            raw = c.regex(_BASE64, "a base64 initial response").group()
            try:
                initial = base64.b64decode(raw, validate=True)
            except (binascii.Error, ValueError):
                raise c.fail("Bad base64 in the initial response") from None
    return Authenticate(mech, initial)


def _login(c: Cursor, uid: bool) -> Login:
    c.sp()
    user = c.astring_str("User name")
    c.sp()
    return Login(user, c.astring_str("Password"))


def _enable(c: Cursor, uid: bool) -> Enable:
    """ENABLE 1*(SP capability) (RFC 5161 §4)."""
    caps = []
    c.sp()
    caps.append(c.keyword())
    while c.try_sp():
        caps.append(c.keyword())
    return Enable(tuple(caps))


def _id(c: Cursor, uid: bool) -> Id:
    """ID SP ("(" *(string SP nstring) ")" / NIL) (RFC 2971 §4)."""
    c.sp()
    if c.try_keyword("NIL"):
        return Id(None)

    def pair() -> tuple[str, str | None]:
        key = c.string().decode("utf-8", "replace")
        c.sp()
        value = c.nstring()
        return key, None if value is None else value.decode("utf-8", "replace")

    c.char(b"(")
    pairs: list[tuple[str, str | None]] = []
    if not c.try_char(b")"):
        pairs.append(pair())
        while c.try_sp():
            pairs.append(pair())
        c.char(b")")
    return Id(tuple(pairs))


def _compress(c: Cursor, uid: bool) -> Compress:
    c.sp()
    return Compress(c.keyword())


def _mailbox_arg(c: Cursor, uid: bool) -> MailboxArg:
    c.sp()
    return MailboxArg(c.mailbox())


def _rename(c: Cursor, uid: bool) -> Rename:
    c.sp()
    old = c.mailbox()
    c.sp()
    return Rename(old, c.mailbox())


# ---- SELECT / EXAMINE / CREATE --------------------------------------------------------------

def _modseq(c: Cursor) -> int:
    """mod-sequence-value / mod-sequence-valzer (RFC 7162 §7): up to 2^63-1."""
    return c.number(limit=MAX_NUMBER64)


def _select(c: Cursor, readonly: bool) -> Select:
    c.sp()
    mailbox = c.mailbox()
    condstore = False
    qresync = None
    if c.try_sp():
        c.char(b"(")
        while True:
            param = c.keyword()
            if param == "CONDSTORE":  # RFC 7162 §3.1.8 (a repeat is harmless)
                condstore = True
            elif param == "QRESYNC" and qresync is None:  # RFC 7162 §3.2.5
                c.sp()
                qresync = _qresync(c)
            else:
                raise c.fail(f"Unknown or repeated SELECT parameter {param}")
            if not c.try_sp():
                break
        c.char(b")")
    return Select(mailbox, readonly, condstore, qresync)


def _qresync(c: Cursor) -> QresyncParams:
    """"(" uidvalidity SP mod-sequence-value [SP known-uids] [SP seq-match-data] ")" (RFC 7162 §7)."""
    c.char(b"(")
    uidvalidity = c.number(nz=True)
    c.sp()
    modseq = _modseq(c)
    known = None
    match = None
    if c.try_sp():
        if c.peek() != b"(":
            known = c.sequence_set(allow_saved=False)
            if c.try_sp():
                match = _seq_match(c)
        else:
            match = _seq_match(c)
    c.char(b")")
    return QresyncParams(uidvalidity, modseq, known, match)


def _seq_match(c: Cursor) -> tuple[Any, Any]:
    c.char(b"(")
    seqs = c.sequence_set(allow_saved=False)
    c.sp()
    uids = c.sequence_set(allow_saved=False)
    c.char(b")")
    return seqs, uids


def _create(c: Cursor, uid: bool) -> Create:
    """CREATE mailbox [SP "(" "USE" SP "(" [use-attr *(SP use-attr)] ")" ")"] (RFC 6154 §3)."""
    c.sp()
    mailbox = c.mailbox()
    use: tuple[str, ...] = ()
    if c.try_sp():
        c.char(b"(")
        if not c.try_keyword("USE"):
            raise c.fail("Unknown CREATE parameter")
        c.sp()
        use = tuple(SPECIAL_USE.get(u.upper(), u) for u in c.flag_list())
        if any(not u.startswith("\\") for u in use):
            raise c.fail("USE attributes start with a backslash")
        c.char(b")")
    return Create(mailbox, use)


# ---- LIST / LSUB / STATUS ---------------------------------------------------------------------

def _status_atts(c: Cursor) -> tuple[str, ...]:
    atts = c.paren_list(c.keyword)
    if not atts:
        raise c.fail("STATUS needs at least one item")
    for a in atts:
        if a not in STATUS_ATTS:
            raise c.fail(f"Unknown STATUS item {a}")
    return tuple(atts)


def _list(c: Cursor, uid: bool) -> ListCmd:
    """LIST [SP list-select-opts] SP mailbox SP mbox-or-pat [SP list-return-opts] (RFC 5258 §6)."""
    c.sp()
    extended = False
    select: set[str] = set()
    if c.peek() == b"(":
        extended = True
        for opt in c.paren_list(c.keyword):
            if opt not in LIST_SELECT_OPTS:
                raise c.fail(f"Unknown LIST selection option {opt}")
            select.add(opt)
        # RFC 5258 §3.1: RECURSIVEMATCH alone MUST get a BAD.
        if "RECURSIVEMATCH" in select and not select - {"RECURSIVEMATCH", "REMOTE"}:
            raise c.fail("RECURSIVEMATCH needs another selection option")
        c.sp()
    reference = c.mailbox()
    c.sp()
    if c.peek() == b"(":
        extended = True
        patterns = tuple(c.paren_list(c.list_mailbox))
        if not patterns:
            raise c.fail("LIST needs at least one pattern")
    else:
        patterns = (c.list_mailbox(),)
    ret: set[str] = set()
    status: tuple[str, ...] = ()
    if c.try_sp():
        if not c.try_keyword("RETURN"):
            raise c.fail("Expected RETURN")
        extended = True
        c.sp()
        c.char(b"(")
        if not c.try_char(b")"):
            while True:
                opt = c.keyword()
                if opt not in LIST_RETURN_OPTS or opt == "STATUS" and opt in ret:
                    raise c.fail(f"Unknown or repeated LIST return option {opt}")
                ret.add(opt)
                if opt == "STATUS":  # RFC 5819 §2
                    c.sp()
                    status = _status_atts(c)
                if not c.try_sp():
                    break
            c.char(b")")
    return ListCmd(reference, patterns, False, frozenset(select), frozenset(ret), status, extended)


def _lsub(c: Cursor, uid: bool) -> ListCmd:
    c.sp()
    reference = c.mailbox()
    c.sp()
    return ListCmd(reference, (c.list_mailbox(),), lsub=True)


def _status(c: Cursor, uid: bool) -> Status:
    c.sp()
    mailbox = c.mailbox()
    c.sp()
    return Status(mailbox, _status_atts(c))


# ---- APPEND ----------------------------------------------------------------------------------

def _append(c: Cursor, uid: bool) -> Append:
    """APPEND SP mailbox 1*append-message (RFC 3502 MULTIAPPEND, RFC 4469 CATENATE, RFC 3516 literal8)."""
    c.sp()
    mailbox = c.mailbox()
    messages: list[AppendMessage] = []
    while c.try_sp():
        flags: tuple[str, ...] = ()
        date = None
        if c.peek() == b"(":
            flags = c.flag_list(settable=True)
            c.sp()
        if c.peek() == b'"':
            date = c.date_time()
            c.sp()
        if c.peek() in (b"{", b"~"):
            data, binary = c.literal_any()
            messages.append(AppendMessage(flags, date, data, binary))
        elif c.try_keyword("UTF8"):
            # RFC 6855 §4: append-data =/ "UTF8" SP "(" literal8 ")", only once UTF8=ACCEPT is enabled.
            if not c.utf8:
                raise c.fail("APPEND UTF8 needs ENABLE UTF8=ACCEPT")
            c.sp()
            c.char(b"(")
            if c.peek() != b"~":
                raise c.fail("APPEND UTF8 takes a literal8")
            data = c.literal()
            c.char(b")")
            messages.append(AppendMessage(flags, date, data, False, None, True))
        elif c.try_keyword("CATENATE"):
            c.sp()
            parts = c.paren_list(lambda: _cat_part(c))
            if not parts:
                raise c.fail("CATENATE needs at least one part")
            messages.append(AppendMessage(flags, date, None, False, tuple(parts)))
        else:
            raise c.fail("Expected the message literal")
    if not messages:
        raise c.fail("APPEND needs a message")
    return Append(mailbox, tuple(messages))


def _cat_part(c: Cursor) -> CatenatePart:
    """cat-part = "TEXT" SP literal / "URL" SP astring (RFC 4469 §5; literal8 with BINARY, RFC 3516 §4.4)."""
    kind = c.keyword()
    c.sp()
    if kind == "TEXT":
        if c.peek() not in (b"{", b"~"):
            raise c.fail("CATENATE TEXT needs a literal")
        return CatenatePart("TEXT", c.literal_any()[0])
    if kind == "URL":
        return CatenatePart("URL", c.astring_str("URL"))
    raise c.fail("CATENATE parts are TEXT or URL")


# ---- STORE / COPY / MOVE / UID EXPUNGE / SENDMAIL ------------------------------------------

def _store(c: Cursor, uid: bool) -> Store:
    """STORE SP sequence-set [store-modifiers] SP store-att-flags (RFC 9051 §9, RFC 7162 §3.1.3)."""
    c.sp()
    seq = c.sequence_set()
    c.sp()
    unchanged = None
    if c.peek() == b"(":
        c.char(b"(")
        if not c.try_keyword("UNCHANGEDSINCE"):
            raise c.fail("Unknown STORE modifier")
        c.sp()
        unchanged = _modseq(c)
        c.char(b")")
        c.sp()
    item = _STORE_ITEMS.get(c.keyword())
    if item is None:
        raise c.fail("Expected FLAGS, +FLAGS or -FLAGS")
    c.sp()
    if c.peek() == b"(":
        flags = c.flag_list(settable=True)
    else:
        fl = [c.flag(settable=True)]
        while c.try_sp():
            fl.append(c.flag(settable=True))
        flags = tuple(fl)
    return Store(seq, item[0], item[1], flags, unchanged)  # type: ignore[arg-type]


def _copy(c: Cursor, uid: bool) -> CopyMove:
    c.sp()
    seq = c.sequence_set()
    c.sp()
    return CopyMove(seq, c.mailbox())


def _expunge(c: Cursor, uid: bool) -> NoArgs | UidExpunge:
    if not uid:
        return NoArgs()
    c.sp()  # RFC 4315 §2.1: UID EXPUNGE SP sequence-set
    return UidExpunge(c.sequence_set())


def _sendmail(c: Cursor, uid: bool) -> UidSendmail:
    """UID SENDMAIL uid [SP "(" FROM SP astring / RECIPIENT SP astring ... ")"] (draft-kundrat-imap-submit)."""
    c.sp()
    number = c.number(nz=True)
    sender = None
    recipients: list[str] = []
    if c.try_sp():
        c.char(b"(")
        while True:
            key = c.keyword()
            c.sp()
            value = c.astring_str("Address")
            if key == "FROM" and sender is None:
                sender = value
            elif key == "RECIPIENT":
                recipients.append(value)
            else:
                raise c.fail("Options are (FROM addr RECIPIENT addr ...)")
            if not c.try_sp():
                break
        c.char(b")")
    return UidSendmail(number, sender, tuple(recipients))


# ---- QUOTA (RFC 9208 §4) ----------------------------------------------------------------------

def _getquota(c: Cursor, uid: bool) -> GetQuota:
    c.sp()
    return GetQuota(c.astring_str("Quota root"))


def _setquota(c: Cursor, uid: bool) -> SetQuota:
    """SETQUOTA SP quota-root SP "(" [setquota-resource *(SP setquota-resource)] ")"."""
    c.sp()
    root = c.astring_str("Quota root")
    c.sp()

    def resource() -> tuple[str, int]:
        name = c.keyword()
        c.sp()
        return name, c.number(limit=MAX_NUMBER64)

    return SetQuota(root, tuple(c.paren_list(resource)))


HANDLERS: dict[str, Handler] = {
    **dict.fromkeys(("CAPABILITY", "NOOP", "LOGOUT", "STARTTLS", "CHECK", "CLOSE", "UNSELECT", "IDLE",
                     "NAMESPACE"), _noargs),
    "EXPUNGE": _expunge,
    "AUTHENTICATE": _authenticate,
    "LOGIN": _login,
    "ENABLE": _enable,
    "ID": _id,
    "COMPRESS": _compress,
    "SELECT": lambda c, uid: _select(c, False),
    "EXAMINE": lambda c, uid: _select(c, True),
    "CREATE": _create,
    "DELETE": _mailbox_arg,
    "RENAME": _rename,
    "SUBSCRIBE": _mailbox_arg,
    "UNSUBSCRIBE": _mailbox_arg,
    "LIST": _list,
    "LSUB": _lsub,
    "STATUS": _status,
    "APPEND": _append,
    "SEARCH": fetchsearch.search,
    "FETCH": fetchsearch.fetch,
    "STORE": _store,
    "COPY": _copy,
    "MOVE": _copy,
    "SORT": fetchsearch.sort,
    "THREAD": fetchsearch.thread,
    "GETQUOTA": _getquota,
    "GETQUOTAROOT": _mailbox_arg,
    "SETQUOTA": _setquota,
}
UID_HANDLERS: dict[str, Handler] = {name: HANDLERS[name] for name in (
    "COPY", "MOVE", "FETCH", "SEARCH", "STORE", "EXPUNGE", "SORT", "THREAD")} | {"SENDMAIL": _sendmail}
KNOWN_COMMANDS = frozenset(HANDLERS) | {"SENDMAIL"}
