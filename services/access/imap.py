"""IMAP4rev1 (RFC 3501) on Twisted's parser, over appliance.mailstore, that can also send.

Twisted's IMAP4Server supplies the command parser (literals, sequence sets,
FETCH attributes, SEARCH); the command handlers that touch mail are our own,
because Twisted's defects are in them (docs/access.md lists each): plaintext
pipelined behind STARTTLS was executed, APPEND to a missing mailbox crashed,
APPEND failures were BAD, FETCH rebuilt headers from a dict and never set
\\Seen, LIST showed message flags as mailbox attributes, IDLE never reported
anything.

Extensions: STARTTLS/LOGINDISABLED, AUTH=PLAIN (after TLS), IDLE (RFC 2177),
NAMESPACE (RFC 2342), UIDPLUS (RFC 4315), MOVE (RFC 6851), SPECIAL-USE (RFC
6154 attributes in LIST), CHILDREN, UNSELECT, X-DRAFT-I01-SENDMAIL
(draft-kundrat-imap-submit) and an Outbox folder that sends what is put in it.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import socket
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, interfaces, reactor, task, threads
from twisted.mail import imap4
from twisted.mail.imap4 import (
    IllegalClientResponse,
    IllegalIdentifierError,
    MessageSet,
    _parseMbox,
    collapseNestedLists,
    getEnvelope,
    parseIdList,
)
from twisted.python import failure, log
from zope.interface import implementer

from appliance.accounts import Account
from appliance.mailstore import DELIMITER, Folder, Mailstore, MailstoreError
from appliance.submitclient import Reply
from services.access.backend import Backend, LoginRefused, LoginUnavailable
from services.access.mime import ParsedMessage, body_structure, header_fields, locate, split_header
from services.access.search import SearchError, search

IDLE_POLL_SECONDS = 1.0
FETCH_BATCH = 64  # messages written per reactor turn by a large FETCH
STRUCTURE_CACHE_SIZE = 50_000
_STRUCTURE_CACHE: OrderedDict[tuple[str, int, int, str], bytes] = OrderedDict()
SUBMIT_PENDING = "$SubmitPending"
SUBMITTED = "$Submitted"
PERMANENT_FLAGS = ["\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft", "\\*"]
_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


def imap_date(ts: float) -> bytes:
    t = time.gmtime(ts)
    return b'"%02d-%s-%04d %02d:%02d:%02d +0000"' % (t.tm_mday, _MONTHS[t.tm_mon - 1].encode(), t.tm_year,
                                                      t.tm_hour, t.tm_min, t.tm_sec)


def literal(data: bytes) -> bytes:
    return b"{%d}\r\n" % len(data) + data


def quote_mbox(name: str) -> bytes:
    enc = name.encode("imap4-utf-7")
    return b'"' + enc.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def flag_list(flags: list[str]) -> bytes:
    return b"(" + " ".join(flags).encode() + b")"


def _uid_set(uids: list[int]) -> bytes:
    """UIDs as a compact sequence set (RFC 4315 uid-set), in the given order."""
    out: list[str] = []
    i = 0
    while i < len(uids):
        j = i
        while j + 1 < len(uids) and uids[j + 1] == uids[j] + 1:
            j += 1
        out.append(str(uids[i]) if i == j else f"{uids[i]}:{uids[j]}")
        i = j + 1
    return ",".join(out).encode()


class OrderedAppends:
    """APPENDs to one folder: files written in worker threads, made visible in UID order.

    Each APPEND reserves the next UID, writes and fsyncs its file in a thread (so
    sessions do not wait for each other's fsyncs, and concurrent fsyncs share
    journal commits), and is committed only when every lower reserved UID has
    been committed or abandoned (RFC 3501 2.3.1.1: UIDs ascend in mailbox order).
    """

    _by_path: dict[str, OrderedAppends] = {}

    @classmethod
    def of(cls, folder: Folder) -> OrderedAppends:
        key = str(folder.path)
        ordered = cls._by_path.get(key)
        if ordered is None or ordered.folder is not folder:
            ordered = cls._by_path[key] = cls(folder)
        return ordered

    def __init__(self, folder: Folder) -> None:
        self.folder = folder
        self.queue: deque[int] = deque()
        self.finished: dict[int, tuple[Any, defer.Deferred[int]]] = {}

    def append(self, data: bytes, flags: list[str], when: float | None) -> defer.Deferred[int]:
        try:
            uid = self.folder.reserve()
        except (MailstoreError, OSError):
            return defer.fail()
        result: defer.Deferred[int] = defer.Deferred()
        self.queue.append(uid)
        written = threads.deferToThread(self.folder.write, uid, data, flags, when)
        written.addBoth(self._written, uid, result)
        return result

    def _written(self, outcome: Any, uid: int, result: defer.Deferred[int]) -> None:
        self.finished[uid] = (outcome, result)
        while self.queue and self.queue[0] in self.finished:
            head = self.queue.popleft()
            value, waiting = self.finished.pop(head)
            if isinstance(value, failure.Failure):
                self.folder.abandon(head)
                waiting.errback(value)
                continue
            try:
                committed = self.folder.commit(value)
            except Exception:
                waiting.errback(failure.Failure())
            else:
                waiting.callback(committed)


class View:
    """One session's view of a selected folder: sequence numbers map to UIDs (RFC 3501 2.3.1.2)."""

    def __init__(self, folder: Folder, writeable: bool) -> None:
        self.folder = folder
        self.writeable = writeable
        folder.sync()
        self.uids = folder.uids()
        self.recent = folder.claim_recent() if writeable else set()
        self.keywords: set[str] = set()

    def seq_of(self, uid: int) -> int:
        return self.uids.index(uid) + 1

    def resolve(self, ids: MessageSet, by_uid: bool) -> list[tuple[int, int]]:
        """[(seq, uid)] named by IDS; '*' is the largest in use (RFC 3501 6.4.8)."""
        if not self.uids:
            # RFC 3501 9 (seq-number): a message number beyond the mailbox is an error;
            # "n:*" is allowed on an empty mailbox.
            if not by_uid and any(low is not None and high is not None for low, high in ids.ranges):
                raise IllegalClientResponse("invalid message sequence number: the mailbox is empty")
            return []
        ids.last = self.uids[-1] if by_uid else len(self.uids)
        if by_uid:
            return [(i, u) for i, u in enumerate(self.uids, 1) if u in ids]
        out = []
        for i in ids:
            if not 1 <= i <= len(self.uids):
                raise IllegalClientResponse(f"invalid message sequence number {i}")
            out.append((i, self.uids[i - 1]))
        return sorted(set(out))

    def refresh(self, expunges: bool) -> list[bytes]:
        """Untagged responses that bring the client up to date; EXPUNGE only when EXPUNGES."""
        self.folder.sync()
        current = set(self.folder.entries)
        out: list[bytes] = []
        if expunges:
            for uid in [u for u in self.uids if u not in current]:
                seq = self.uids.index(uid) + 1
                self.uids.pop(seq - 1)
                out.append(b"%d EXPUNGE" % seq)
        known = set(self.uids)
        new = [u for u in sorted(current) if u not in known and (not self.uids or u > self.uids[-1])]
        if new:
            self.uids.extend(new)
            if self.writeable:
                self.recent |= self.folder.claim_recent()
            out.append(b"%d EXISTS" % len(self.uids))
            out.append(b"%d RECENT" % len(self.recent))
        return out

    def remove(self, uids: list[int]) -> list[bytes]:
        out = []
        for uid in sorted(uids):
            if uid in self.uids:
                seq = self.uids.index(uid) + 1
                self.uids.pop(seq - 1)
                self.recent.discard(uid)
                out.append(b"%d EXPUNGE" % seq)
        return out


class IMAPServer(imap4.IMAP4Server):
    IDENT = b"IMAP4rev1 ISP Mail Appliance ready"
    timeOut = 60
    POSTAUTH_TIMEOUT = 30 * 60

    def __init__(self, backend: Backend, tls_context: Any, implicit_tls: bool) -> None:
        super().__init__(chal={}, contextFactory=tls_context)
        self.backend = backend
        self.implicit_tls = implicit_tls
        self.user: Account | None = None
        self.store: Mailstore | None = None
        self.view: View | None = None
        self._idle_tag: bytes | None = None
        self._idle_loop: task.LoopingCall | None = None

    # --- session basics -------------------------------------------------------------

    @property
    def secure(self) -> bool:
        return self.implicit_tls or self.startedTLS

    @property
    def client_ip(self) -> str:
        peer = self.transport.getPeer()
        return str(getattr(peer, "host", "unknown"))

    def listCapabilities(self) -> list[bytes]:
        caps = [b"IMAP4rev1"]
        if not self.secure:
            # RFC 3501 6.2.3 / RFC 2595 3.2: no plaintext login before TLS.
            caps += [b"STARTTLS", b"LOGINDISABLED"]
            return caps
        if self.state == "unauth":
            return caps + [b"AUTH=PLAIN"]
        return caps + [b"CHILDREN", b"IDLE", b"MOVE", b"NAMESPACE", b"SPECIAL-USE", b"UIDPLUS", b"UNSELECT",
                       b"X-DRAFT-I01-SENDMAIL"]

    def capabilities(self) -> dict[bytes, Any]:
        return {c: None for c in self.listCapabilities()[1:]}

    def connectionMade(self) -> None:
        self._sock = tcp_socket(self.transport)
        set_nodelay(self._sock)
        super().connectionMade()

    def dataReceived(self, data: bytes) -> None:
        quick_ack(self._sock)
        super().dataReceived(data)

    def sendServerGreeting(self) -> None:
        self.sendPositiveResponse(message=b"[CAPABILITY " + b" ".join(self.listCapabilities()) + b"] " + self.IDENT)

    def connectionLost(self, reason: Any) -> None:
        self._stop_idle()
        self.view = None
        super().connectionLost(reason)

    def lineReceived(self, line: bytes) -> None:
        try:
            super().lineReceived(line)
        except Exception:
            log.err()

    def dispatchCommand(self, tag: bytes, cmd: bytes, rest: bytes | None, uid: int | None = None) -> None:
        # Every command ends with a tagged reply, even on an unexpected error (Twisted's
        # fallback was an untagged BAD, leaving the client waiting for its tag).
        try:
            super().dispatchCommand(tag, cmd, rest, uid)
        except (IllegalClientResponse, imap4.IllegalOperation, imap4.IllegalMailboxEncoding):
            raise  # answered by Twisted's parse_command (BAD / NO)
        except MailstoreError as exc:
            self.sendNegativeResponse(tag, str(exc).encode())
        except Exception:
            log.err()
            self.sendNegativeResponse(tag, b"[SERVERBUG] Internal error, try again later")

    def _untagged(self, lines: list[bytes]) -> None:
        for line in lines:
            self.sendUntaggedResponse(line)

    def _sync_selected(self, expunges: bool = False) -> None:
        if self.view is not None:
            try:
                self._untagged(self.view.refresh(expunges))
            except MailstoreError as exc:
                self.sendUntaggedResponse(b"BYE " + str(exc).encode())
                self.transport.loseConnection()

    # --- STARTTLS and login ----------------------------------------------------------

    def do_STARTTLS(self, tag: bytes) -> None:
        if self.secure:
            self.sendBadResponse(tag, b"TLS is already active")
            return
        if interfaces.ITLSTransport(self.transport, None) is None:
            self.sendNegativeResponse(tag, b"TLS not available")
            return
        self.sendPositiveResponse(tag, b"Begin TLS negotiation now")
        # RFC 3501 6.2.1 / CVE-2011-0411: commands pipelined behind STARTTLS arrived in
        # plaintext; they must not be executed inside the TLS session. Drop them.
        self._buffer = b""
        self.blocked = None
        self.transport.startTLS(self.ctx)
        self.startedTLS = True

    unauth_STARTTLS = (do_STARTTLS,)

    def do_LOGIN(self, tag: bytes, user: bytes, passwd: bytes) -> None:
        if not self.secure:
            self.sendNegativeResponse(tag, b"[PRIVACYREQUIRED] LOGIN is disabled before STARTTLS")
            return
        self._login(tag, user, passwd)

    unauth_LOGIN = (do_LOGIN, imap4.IMAP4Server.arg_astring, imap4.IMAP4Server.arg_finalastring)

    def do_AUTHENTICATE(self, tag: bytes, mech: bytes) -> None:
        if not self.secure:
            self.sendNegativeResponse(tag, b"[PRIVACYREQUIRED] AUTHENTICATE is disabled before STARTTLS")
            return
        if mech.upper() != b"PLAIN":
            self.sendNegativeResponse(tag, b"Unsupported authentication mechanism")
            return
        self.sendContinuationRequest(None)
        self.parseState = "pending"
        d: defer.Deferred[bytes] = defer.Deferred()
        self._pendingLiteral = d

        def got(line: bytes) -> None:
            if line.strip() == b"*":
                self.sendBadResponse(tag, b"AUTHENTICATE cancelled")
                return
            try:
                parts = base64.b64decode(line.strip(), validate=True).split(b"\0")
            except (binascii.Error, ValueError):
                self.sendBadResponse(tag, b"AUTHENTICATE data is not base64")
                return
            if len(parts) != 3 or (parts[0] and parts[0] != parts[1]):
                self.sendNegativeResponse(tag, b"[AUTHENTICATIONFAILED] Authentication failed")
                return
            self._login(tag, parts[1], parts[2])

        d.addCallback(got)

    unauth_AUTHENTICATE = (do_AUTHENTICATE, imap4.IMAP4Server.arg_atom)

    def _login(self, tag: bytes, user: bytes, passwd: bytes) -> None:
        self.setTimeout(None)
        self.blocked = []  # RFC 3501 5.5: do not run pipelined commands until the login is judged
        d = self.backend.login(user.decode("utf-8", "replace"), passwd.decode("utf-8", "replace"), self.client_ip)

        def ok(account: Account) -> None:
            self.user = account
            self.store = self.backend.mailstore(account.address)
            self.account = self.store  # Twisted checks it is set
            self.state = "auth"
            self.sendPositiveResponse(tag, b"[CAPABILITY " + b" ".join(self.listCapabilities()) + b"] Logged in")
            self.setTimeout(self.POSTAUTH_TIMEOUT)

        def failed(f: Any) -> None:
            self.setTimeout(self.timeOut)
            if f.check(LoginRefused):
                self.sendNegativeResponse(tag, b"[AUTHENTICATIONFAILED] Authentication failed")
            elif f.check(LoginUnavailable):
                reply: Reply = f.value.reply
                code = b"[LIMIT]" if reply.limited else b"[UNAVAILABLE]"
                self.sendNegativeResponse(tag, code + b" " + reply.text.encode())
            else:
                log.err(f)
                self.sendNegativeResponse(tag, b"[UNAVAILABLE] Temporary authentication failure")

        d.addCallbacks(ok, failed)
        d.addBoth(lambda _: self._unblock())

    # --- mailboxes ----------------------------------------------------------------------

    def do_NAMESPACE(self, tag: bytes) -> None:
        self.sendUntaggedResponse(b'NAMESPACE (("" "' + DELIMITER.encode() + b'")) NIL NIL')
        self.sendPositiveResponse(tag, b"NAMESPACE completed")

    auth_NAMESPACE = (do_NAMESPACE,)
    select_NAMESPACE = auth_NAMESPACE

    def _listWork(self, tag: bytes, ref: bytes, mbox: bytes, sub: int, cmdName: bytes) -> None:
        assert self.store is not None
        pattern = _parseMbox(ref) + _parseMbox(mbox)
        if not _parseMbox(mbox):
            # RFC 3501 6.3.8: an empty name asks for the delimiter and the root.
            self.sendUntaggedResponse(cmdName + b' (\\Noselect) "' + DELIMITER.encode() + b'" ""')
            self.sendPositiveResponse(tag, cmdName + b" completed")
            return
        subs = self.store.subscriptions() if sub else set()
        for name in self.store.names():
            if not _wildcard_match(pattern, name):
                continue
            if sub and name not in subs:
                continue
            # LSUB: a subscription has no child attributes of its own (as Dovecot answers).
            attrs = [] if sub else self.store.attributes(name)
            self.sendUntaggedResponse(cmdName + b" (" + " ".join(attrs).encode() + b') "' + DELIMITER.encode()
                                      + b'" ' + quote_mbox(name))
        self.sendPositiveResponse(tag, cmdName + b" completed")

    auth_LIST = (_listWork, imap4.IMAP4Server.arg_astring, imap4.IMAP4Server.arg_astring, 0, b"LIST")
    select_LIST = auth_LIST
    auth_LSUB = (_listWork, imap4.IMAP4Server.arg_astring, imap4.IMAP4Server.arg_astring, 1, b"LSUB")
    select_LSUB = auth_LSUB

    def _mailbox_op(self, tag: bytes, op: Callable[[], None], done: bytes) -> None:
        try:
            op()
        except MailstoreError as exc:
            self.sendNegativeResponse(tag, str(exc).encode())
        else:
            self.sendPositiveResponse(tag, done)

    def do_CREATE(self, tag: bytes, name: bytes) -> None:
        assert self.store is not None
        self._mailbox_op(tag, lambda: self.store.create(_parseMbox(name)), b"CREATE completed")  # type: ignore[union-attr]

    def do_DELETE(self, tag: bytes, name: bytes) -> None:
        assert self.store is not None
        self._mailbox_op(tag, lambda: self.store.delete(_parseMbox(name)), b"DELETE completed")  # type: ignore[union-attr]

    def do_RENAME(self, tag: bytes, old: bytes, new: bytes) -> None:
        assert self.store is not None
        self._mailbox_op(tag, lambda: self.store.rename(_parseMbox(old), _parseMbox(new)), b"RENAME completed")  # type: ignore[union-attr]

    def do_SUBSCRIBE(self, tag: bytes, name: bytes) -> None:
        assert self.store is not None
        self._mailbox_op(tag, lambda: self.store.subscribe(_parseMbox(name)), b"SUBSCRIBE completed")  # type: ignore[union-attr]

    def do_UNSUBSCRIBE(self, tag: bytes, name: bytes) -> None:
        assert self.store is not None
        self._mailbox_op(tag, lambda: self.store.subscribe(_parseMbox(name), False), b"UNSUBSCRIBE completed")  # type: ignore[union-attr]

    auth_CREATE = (do_CREATE, imap4.IMAP4Server.arg_finalastring)
    select_CREATE = auth_CREATE
    auth_DELETE = (do_DELETE, imap4.IMAP4Server.arg_finalastring)
    select_DELETE = auth_DELETE
    auth_RENAME = (do_RENAME, imap4.IMAP4Server.arg_astring, imap4.IMAP4Server.arg_finalastring)
    select_RENAME = auth_RENAME
    auth_SUBSCRIBE = (do_SUBSCRIBE, imap4.IMAP4Server.arg_finalastring)
    select_SUBSCRIBE = auth_SUBSCRIBE
    auth_UNSUBSCRIBE = (do_UNSUBSCRIBE, imap4.IMAP4Server.arg_finalastring)
    select_UNSUBSCRIBE = auth_UNSUBSCRIBE

    def do_STATUS(self, tag: bytes, name: bytes, items: list[bytes]) -> None:
        assert self.store is not None
        mbox = _parseMbox(name)
        folder = self.store.folder(mbox)
        if folder is None:
            self.sendNegativeResponse(tag, b"[NONEXISTENT] Mailbox doesn't exist: " + mbox.encode("imap4-utf-7"))
            return
        folder.sync()
        values = {
            b"MESSAGES": len(folder.entries),
            b"RECENT": len(folder.recent),
            b"UIDNEXT": folder.next_uid,
            b"UIDVALIDITY": folder.uidvalidity,
            b"UNSEEN": folder.unseen_count(),
        }
        out = []
        for item in items:
            key = item.upper()
            if key not in values:
                self.sendBadResponse(tag, b"Unknown STATUS item " + key)
                return
            out.append(b"%s %d" % (key, values[key]))
        self.sendUntaggedResponse(b"STATUS " + quote_mbox(mbox) + b" (" + b" ".join(out) + b")")
        self.sendPositiveResponse(tag, b"STATUS completed")

    auth_STATUS = (do_STATUS, imap4.IMAP4Server.arg_astring, imap4.IMAP4Server.arg_plist)
    select_STATUS = auth_STATUS

    def _selectWork(self, tag: bytes, name: bytes, rw: int, cmdName: bytes) -> None:
        assert self.store is not None
        self.view = None
        self.state = "auth"
        mbox = _parseMbox(name)
        folder = self.store.folder(mbox)
        if folder is None:
            self.sendNegativeResponse(tag, b"[NONEXISTENT] Mailbox doesn't exist: " + mbox.encode("imap4-utf-7"))
            return
        try:
            view = View(folder, bool(rw))
        except MailstoreError as exc:
            self.sendNegativeResponse(tag, str(exc).encode())
            return
        view.keywords = folder.defined_keywords()
        self._send_flags(view, bool(rw))
        self.sendUntaggedResponse(b"%d EXISTS" % len(view.uids))
        self.sendUntaggedResponse(b"%d RECENT" % len(view.recent))
        first_unseen = folder.first_unseen()
        if first_unseen is not None:
            self.sendUntaggedResponse(b"OK [UNSEEN %d] First unseen." % first_unseen)
        self.sendUntaggedResponse(b"OK [UIDVALIDITY %d] UIDs valid" % folder.uidvalidity)
        self.sendUntaggedResponse(b"OK [UIDNEXT %d] Predicted next UID" % folder.next_uid)
        self.view = view
        self.state = "select"
        mode = b"[READ-WRITE]" if rw else b"[READ-ONLY]"
        self.sendPositiveResponse(tag, mode + b" " + cmdName + b" completed")

    def _send_flags(self, view: View, writeable: bool) -> None:
        flags = ["\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft", *sorted(view.keywords)]
        self.sendUntaggedResponse(b"FLAGS " + flag_list(flags))
        perm = [*flags, "\\*"] if writeable else []
        self.sendUntaggedResponse(b"OK [PERMANENTFLAGS " + flag_list(perm) + b"] Flags permitted.")

    auth_SELECT = (_selectWork, imap4.IMAP4Server.arg_astring, 1, b"SELECT")
    select_SELECT = auth_SELECT
    auth_EXAMINE = (_selectWork, imap4.IMAP4Server.arg_astring, 0, b"EXAMINE")
    select_EXAMINE = auth_EXAMINE

    def do_CLOSE(self, tag: bytes) -> None:
        assert self.view is not None
        if self.view.writeable:
            # RFC 3501 6.4.2: silently expunge \Deleted messages.
            f = self.view.folder
            f.expunge([u for u in self.view.uids if u in f.entries and "T" in f.entries[u].letters])
        self.view = None
        self.state = "auth"
        self.sendPositiveResponse(tag, b"CLOSE completed")

    select_CLOSE = (do_CLOSE,)

    def do_UNSELECT(self, tag: bytes) -> None:
        self.view = None
        self.state = "auth"
        self.sendPositiveResponse(tag, b"UNSELECT completed")

    select_UNSELECT = (do_UNSELECT,)

    def do_NOOP(self, tag: bytes) -> None:
        self._sync_selected(expunges=True)
        self.sendPositiveResponse(tag, b"NOOP completed")

    unauth_NOOP = (do_NOOP,)
    auth_NOOP = unauth_NOOP
    select_NOOP = unauth_NOOP

    def do_CHECK(self, tag: bytes) -> None:
        self._sync_selected(expunges=True)
        self.sendPositiveResponse(tag, b"CHECK completed")

    select_CHECK = (do_CHECK,)

    # --- IDLE (RFC 2177) ------------------------------------------------------------------

    def do_IDLE(self, tag: bytes) -> None:
        self._idle_tag = tag
        self.sendContinuationRequest(b"idling")
        self.lastState = self.parseState
        self.parseState = "idle"
        self.setTimeout(self.POSTAUTH_TIMEOUT)
        if self.view is not None:
            self._idle_loop = task.LoopingCall(self._sync_selected, True)
            self._idle_loop.start(IDLE_POLL_SECONDS, now=True)

    def parse_idle(self, line: bytes) -> None:
        self._stop_idle()
        self.parseState = self.lastState
        tag, self._idle_tag = self._idle_tag, None
        if line.strip().upper() == b"DONE":
            self.sendPositiveResponse(tag, b"IDLE terminated")
        else:
            self.sendBadResponse(tag, b"Expected DONE")

    def _stop_idle(self) -> None:
        if self._idle_loop is not None and self._idle_loop.running:
            self._idle_loop.stop()
        self._idle_loop = None

    auth_IDLE = (do_IDLE,)
    select_IDLE = auth_IDLE

    # --- APPEND, COPY, MOVE and the Outbox --------------------------------------------

    def _is_outbox(self, name: str) -> bool:
        outbox = self.backend.cfg.access.outbox
        return bool(outbox) and name.lower() == outbox.lower()

    def do_APPEND(self, tag: bytes, name: bytes, flags: list[bytes] | None, date: bytes | None, message: Any) -> None:
        # Twisted answered BAD (or crashed) on APPEND failures; RFC 3501 6.3.11 says NO.
        try:
            self._append(tag, name, flags, date, message)
        except Exception:
            log.err()
            self.sendNegativeResponse(tag, b"[SERVERBUG] APPEND failed, try again later")

    def _append(self, tag: bytes, name: bytes, flags: list[bytes] | None, date: bytes | None, message: Any) -> None:
        assert self.store is not None and self.user is not None
        mbox = _parseMbox(name)
        message.seek(0)
        data = message.read()
        folder = self.store.folder(mbox)
        if folder is None:
            # RFC 3501 6.3.11: the client may CREATE and retry.
            self.sendNegativeResponse(tag, b"[TRYCREATE] Mailbox doesn't exist: " + mbox.encode("imap4-utf-7"))
            return
        if len(data) > self.backend.cfg.relay.max_message_size:
            self.sendNegativeResponse(tag, b"[TOOBIG] Message is larger than the limit")
            return
        flag_names = [f.decode("utf-8", "replace") for f in flags or []]
        when = None
        if date:
            parsed = email.utils.parsedate_tz(date.decode("ascii", "replace").replace("-", " "))
            when = email.utils.mktime_tz(parsed) if parsed else None
        if self._is_outbox(mbox):
            self.blocked = []
            d = self.backend.send(self.user.address, self.client_ip, "IMAP", data)
            d.addCallback(self._outbox_sent, tag, folder, data, flag_names, when, b"APPEND")
            d.addErrback(self._internal_error, tag)
            d.addBoth(lambda _: self._unblock())
            return
        self.blocked = []  # pipelined commands wait for this APPEND's answer
        self._append_now(tag, folder, data, flag_names, when).addBoth(lambda _: self._unblock())

    def _append_now(self, tag: bytes, folder: Folder, data: bytes, flags: list[str], when: float | None,
                    extra: bytes = b"") -> defer.Deferred[None]:
        """Store in FOLDER (the file I/O in a worker thread) and answer; fires when answered."""
        d = OrderedAppends.of(folder).append(data, flags, when)

        def stored(uid: int) -> None:
            if self.view is not None and self.view.folder is folder:
                self._sync_selected()
            self.sendPositiveResponse(tag, b"[APPENDUID %d %d] APPEND completed%s" % (folder.uidvalidity, uid, extra))

        def failed(f: Any) -> None:
            if not f.check(MailstoreError, OSError):
                log.err(f)
            self.sendNegativeResponse(tag, b"[SERVERBUG] APPEND failed: " + str(f.value).encode())

        d.addCallbacks(stored, failed)
        return d

    def _outbox_sent(self, reply: Reply, tag: bytes, folder: Folder, data: bytes, flags: list[str],
                     when: float | None, verb: bytes) -> defer.Deferred[None] | None:
        if not reply.ok:
            # Courier-IMAP's Outbox convention: the refusal is an ALERT the user sees.
            self.sendNegativeResponse(tag, b"[ALERT] " + _refusal(reply))
            return None
        flags = [f for f in flags if f.lower() != SUBMIT_PENDING.lower()] + [SUBMITTED]
        queued = f" (queued as {reply.queue_id})".encode() if reply.queue_id else b""
        if verb == b"APPEND":
            return self._append_now(tag, folder, data, flags, when, queued)  # the caller waits for it
        else:
            try:
                uid = folder.add(data, flags, when)
            except (MailstoreError, OSError) as exc:
                self.sendNegativeResponse(tag, b"[SERVERBUG] sent, but not stored: " + str(exc).encode())
                return None
            src_uid = self._outbox_src
            self.sendPositiveResponse(tag, b"[COPYUID %d %d %d] %s completed%s"
                                      % (folder.uidvalidity, src_uid, uid, verb, queued))
            return None

    def _internal_error(self, f: Any, tag: bytes) -> None:
        log.err(f)
        self.sendNegativeResponse(tag, b"[SERVERBUG] Internal error, try again later")

    auth_APPEND = (do_APPEND, imap4.IMAP4Server.arg_astring, imap4.IMAP4Server.opt_plist, imap4.IMAP4Server.opt_datetime,
                   imap4.IMAP4Server.arg_literal)
    select_APPEND = auth_APPEND

    def do_COPY(self, tag: bytes, messages: MessageSet, name: bytes, uid: int = 0, move: bool = False) -> None:
        assert self.view is not None and self.store is not None and self.user is not None
        verb = b"MOVE" if move else b"COPY"
        mbox = _parseMbox(name)
        dest = self.store.folder(mbox)
        if dest is None:
            self.sendNegativeResponse(tag, b"[TRYCREATE] Mailbox doesn't exist: " + mbox.encode("imap4-utf-7"))
            return
        src = self.view.folder
        chosen = [(s, u) for s, u in self.view.resolve(messages, bool(uid)) if u in src.entries]
        if self._is_outbox(mbox):
            if len(chosen) != 1:
                self.sendNegativeResponse(tag, b"[ALERT] Put exactly one message into the Outbox per command")
                return
            seq, u = chosen[0]
            try:
                data = src.read(u)
            except MailstoreError as exc:
                self.sendNegativeResponse(tag, str(exc).encode())
                return
            self._outbox_src = u
            self.blocked = []
            d = self.backend.send(self.user.address, self.client_ip, "IMAP", data)

            def after(reply: Reply) -> None:
                if reply.ok and move:
                    self._untagged(self.view.remove(src.expunge([u])) if self.view else [])
                self._outbox_sent(reply, tag, dest, data, src.entries[u].flags() if u in src.entries else [],
                                  src.internal_date(u), verb)

            d.addCallback(after)
            d.addErrback(self._internal_error, tag)
            d.addBoth(lambda _: self._unblock())
            return
        if not chosen:
            self.sendPositiveResponse(tag, verb + b" completed (no messages)")
            return
        src_uids, dst_uids = [], []
        try:
            for _, u in chosen:
                data = src.read(u) if u in src.entries else None
                if data is None:
                    continue
                dst_uids.append(dest.add(data, src.entries[u].flags(), src.internal_date(u)))
                src_uids.append(u)
        except (MailstoreError, OSError) as exc:
            self.sendNegativeResponse(tag, b"[SERVERBUG] " + verb + b" failed: " + str(exc).encode())
            return
        code = b"[COPYUID %d %s %s]" % (dest.uidvalidity, _uid_set(src_uids), _uid_set(dst_uids))
        if move:
            # RFC 6851 4.3: COPYUID goes in an untagged OK before the EXPUNGEs.
            self.sendUntaggedResponse(b"OK " + code + b" Moved UIDs.")
            self._untagged(self.view.remove(src.expunge(src_uids)))
            self.sendPositiveResponse(tag, b"MOVE completed")
        else:
            if self.view.folder is dest:
                self._sync_selected()
            self.sendPositiveResponse(tag, code + b" COPY completed")

    select_COPY = (do_COPY, imap4.IMAP4Server.arg_seqset, imap4.IMAP4Server.arg_finalastring)

    def do_MOVE(self, tag: bytes, messages: MessageSet, name: bytes, uid: int = 0) -> None:
        if not self.view.writeable:  # type: ignore[union-attr]
            self.sendNegativeResponse(tag, b"[READ-ONLY] Mailbox is read-only")
            return
        self.do_COPY(tag, messages, name, uid, move=True)

    select_MOVE = (do_MOVE, imap4.IMAP4Server.arg_seqset, imap4.IMAP4Server.arg_finalastring)

    # --- FETCH, STORE, SEARCH, EXPUNGE ---------------------------------------------------

    def do_FETCH(self, tag: bytes, messages: MessageSet, query: list[Any], uid: int = 0) -> None:
        assert self.view is not None
        view = self.view
        try:
            chosen = view.resolve(messages, bool(uid))
        except IllegalClientResponse as exc:
            self.sendBadResponse(tag, str(exc).encode())
            return
        sets_seen = view.writeable and any(
            (p.type == "body" and not p.peek and _has_section(p)) or p.type in ("rfc822", "rfc822text")
            for p in query)
        if len(chosen) <= FETCH_BATCH:
            self._fetch_batch(chosen, query, bool(uid), sets_seen)
            self.sendPositiveResponse(tag, b"FETCH completed")
            return
        # A large FETCH is written in batches as the client reads (a push producer), so a
        # slow client syncing a big mailbox cannot make the server buffer all of it.
        self.blocked = []  # pipelined commands wait until the FETCH is complete
        _FetchProducer(self, tag, chosen, query, bool(uid), sets_seen).start()

    def _fetch_batch(self, chosen: list[tuple[int, int]], query: list[Any], by_uid: bool, sets_seen: bool) -> None:
        assert self.view is not None
        folder = self.view.folder
        out: list[bytes] = []
        for seq, u in chosen:
            if u not in folder.entries:
                continue  # expunged by another session; reported at the next NOOP
            try:
                out.append(self._fetch_one(seq, u, query, by_uid, sets_seen))
            except MailstoreError:
                continue
        self.transport.writeSequence(out)

    select_FETCH = (do_FETCH, imap4.IMAP4Server.arg_seqset, imap4.IMAP4Server.arg_fetchatt)

    def _fetch_one(self, seq: int, u: int, query: list[Any], by_uid: bool, sets_seen: bool) -> bytes:
        assert self.view is not None
        folder = self.view.folder
        entry = folder.entries[u]
        flags_changed = False
        if sets_seen and "S" not in entry.letters:
            folder.set_flags(u, [*entry.flags(), "\\Seen"])
            flags_changed = True
        data: bytes | None = None
        items: list[bytes] = []
        if by_uid and not any(p.type == "uid" for p in query):
            items.append(b"UID %d" % u)
        for p in query:
            t = p.type
            if t == "uid":
                items.append(b"UID %d" % u)
            elif t == "flags":
                items.append(b"FLAGS " + flag_list(self._flags(u)))
            elif t == "internaldate":
                items.append(b"INTERNALDATE " + imap_date(folder.internal_date(u)))
            elif t == "rfc822size":
                items.append(b"RFC822.SIZE %d" % entry.size)
            elif t in ("envelope", "bodystructure") or (t == "body" and not _has_section(p)):
                # Messages never change, so their parsed structure is cached (Dovecot keeps
                # the same in its index cache); UIDs are never reused within a UIDVALIDITY.
                key = (str(folder.path), folder.uidvalidity, u, t)
                value = _STRUCTURE_CACHE.get(key)
                if value is None:
                    if data is None:
                        data = folder.read(u)
                    if t == "envelope":
                        value = b"ENVELOPE " + envelope(data)
                    else:
                        name = b"BODYSTRUCTURE " if t == "bodystructure" else b"BODY "
                        value = name + body_structure(data, t == "bodystructure", envelope)
                    _STRUCTURE_CACHE[key] = value
                    if len(_STRUCTURE_CACHE) > STRUCTURE_CACHE_SIZE:
                        _STRUCTURE_CACHE.popitem(last=False)
                else:
                    _STRUCTURE_CACHE.move_to_end(key)
                items.append(value)
            else:
                if data is None:
                    data = folder.read(u)
                name, content = _body_item(p, data)
                items.append(name + b" " + literal(content))
        if flags_changed and not any(p.type == "flags" for p in query):
            items.append(b"FLAGS " + flag_list(self._flags(u)))
        return b"* %d FETCH (" % seq + b" ".join(items) + b")\r\n"

    def _flags(self, uid: int) -> list[str]:
        assert self.view is not None
        flags = self.view.folder.entries[uid].flags()
        return [*flags, "\\Recent"] if uid in self.view.recent else flags

    def do_STORE(self, tag: bytes, messages: MessageSet, mode: bytes, flags: list[bytes], uid: int = 0) -> None:
        assert self.view is not None
        try:
            chosen = self.view.resolve(messages, bool(uid))
        except IllegalClientResponse as exc:
            self.sendBadResponse(tag, str(exc).encode())
            return
        if not self.view.writeable:
            self.sendNegativeResponse(tag, b"[READ-ONLY] Mailbox is read-only")
            return
        mode = mode.upper()
        silent = mode.endswith(b".SILENT")
        op = mode.split(b".")[0]
        if op not in (b"FLAGS", b"+FLAGS", b"-FLAGS"):
            self.sendBadResponse(tag, b"Invalid STORE mode " + mode)
            return
        given = [f.decode("utf-8", "replace") for f in flags]
        lower = {g.lower() for g in given}
        folder = self.view.folder
        new_keywords = {g for g in given if not g.startswith("\\")} - self.view.keywords
        if new_keywords and op != b"-FLAGS":
            # RFC 3501 7.2.6: a new keyword changes the mailbox's FLAGS; tell the client first.
            self.view.keywords |= new_keywords
            folder.define_keywords(new_keywords)
            self._send_flags(self.view, True)
        for seq, u in chosen:
            entry = folder.entries.get(u)
            if entry is None:
                continue
            current = entry.flags()
            if op == b"FLAGS":
                new = given
            elif op == b"+FLAGS":
                new = current + [g for g in given if g.lower() not in {c.lower() for c in current}]
            else:
                new = [c for c in current if c.lower() not in lower]
            try:
                folder.set_flags(u, new)
            except MailstoreError:
                continue
            if not silent:
                uid_part = b"UID %d " % u if uid else b""
                self.sendUntaggedResponse(b"%d FETCH (%sFLAGS %s)" % (seq, uid_part, flag_list(self._flags(u))))
        self.sendPositiveResponse(tag, b"STORE completed")

    select_STORE = (do_STORE, imap4.IMAP4Server.arg_seqset, imap4.IMAP4Server.arg_atom,
                    imap4.IMAP4Server.arg_flaglist)

    def do_SEARCH(self, tag: bytes, charset: Any, query: list[Any], uid: int = 0) -> None:
        assert self.view is not None
        if charset and charset.upper() not in (b"UTF-8", b"US-ASCII"):
            self.sendNegativeResponse(tag, b"[BADCHARSET (UTF-8 US-ASCII)] Unsupported charset")
            return
        try:
            hits = search(self.view.folder, self.view.uids, self.view.recent, query, bool(uid))
        except (SearchError, IllegalClientResponse, IllegalIdentifierError) as exc:
            self.sendBadResponse(tag, b"Invalid search: " + str(exc).encode())
            return
        self.sendUntaggedResponse(b"SEARCH" + b"".join(b" %d" % h for h in hits))
        self.sendPositiveResponse(tag, b"SEARCH completed")

    select_SEARCH = (do_SEARCH, imap4.IMAP4Server.opt_charset, imap4.IMAP4Server.arg_searchkeys)

    def do_EXPUNGE(self, tag: bytes, uids: MessageSet | None = None) -> None:
        assert self.view is not None
        if not self.view.writeable:
            self.sendNegativeResponse(tag, b"[READ-ONLY] Mailbox is read-only")
            return
        folder = self.view.folder
        allowed = {u for _, u in self.view.resolve(uids, True)} if uids is not None else None
        doomed = [u for u in self.view.uids if u in folder.entries and "T" in folder.entries[u].letters
                  and (allowed is None or u in allowed)]
        self._untagged(self.view.remove(folder.expunge(doomed)))
        self.sendPositiveResponse(tag, b"EXPUNGE completed")

    select_EXPUNGE = (do_EXPUNGE,)

    # --- UID commands, including SENDMAIL ----------------------------------------------

    def do_UID(self, tag: bytes, command: bytes, line: bytes) -> None:
        command = command.upper()
        if command == b"EXPUNGE":
            # RFC 4315 2.1
            try:
                ids = parseIdList(line.strip())
            except Exception:
                raise IllegalClientResponse("Bad UID set") from None
            self.do_EXPUNGE(tag, ids)
            return
        if command == b"SENDMAIL":
            self._sendmail(tag, line)
            return
        if command not in (b"COPY", b"FETCH", b"STORE", b"SEARCH", b"MOVE"):
            raise IllegalClientResponse(command)
        self.dispatchCommand(tag, command, line, uid=1)

    select_UID = (do_UID, imap4.IMAP4Server.arg_atom, imap4.IMAP4Server.arg_line)

    def _sendmail(self, tag: bytes, line: bytes) -> None:
        """UID SENDMAIL uid [(FROM addr RECIPIENT addr ...)] (draft-kundrat-imap-submit)."""
        assert self.view is not None and self.user is not None
        head, _, rest = line.strip().partition(b" ")
        if not head.isdigit():
            self.sendBadResponse(tag, b"UID SENDMAIL needs a UID")
            return
        u = int(head)
        sender: str | None = None
        recipients: list[str] = []
        if rest.strip():
            opts = imap4.parseNestedParens(rest.strip())
            if len(opts) != 1 or not isinstance(opts[0], list) or len(opts[0]) % 2:
                self.sendBadResponse(tag, b"Options must be (FROM addr RECIPIENT addr ...)")
                return
            pairs = opts[0]
            for key, value in zip(pairs[::2], pairs[1::2], strict=True):
                k = key.upper() if isinstance(key, bytes) else b""
                if k == b"FROM" and isinstance(value, bytes):
                    sender = value.decode("utf-8", "replace")
                elif k == b"RECIPIENT" and isinstance(value, bytes):
                    recipients.append(value.decode("utf-8", "replace"))
                else:
                    self.sendBadResponse(tag, b"Unknown SENDMAIL option")
                    return
        folder = self.view.folder
        entry = folder.entries.get(u)
        if entry is None or u not in self.view.uids:
            self.sendNegativeResponse(tag, b"[NONEXISTENT] No message with that UID")
            return
        if SUBMIT_PENDING.lower() not in {k.lower() for k in entry.keywords}:
            self.sendNegativeResponse(tag, b"Message is not marked " + SUBMIT_PENDING.encode())
            return
        data = folder.read(u)
        self.blocked = []
        d = self.backend.send(self.user.address, self.client_ip, "IMAP", data, sender, recipients or None)

        def done(reply: Reply) -> None:
            if not reply.ok:
                self.sendNegativeResponse(tag, b"[" + reply.imap_code().encode() + b"] " + reply.text.encode())
                return
            e = folder.entries.get(u)
            if e is not None and self.view is not None and u in self.view.uids:
                flags = [f for f in e.flags() if f.lower() != SUBMIT_PENDING.lower()] + [SUBMITTED]
                folder.set_flags(u, flags)
                self.sendUntaggedResponse(b"%d FETCH (UID %d FLAGS %s)" % (self.view.seq_of(u), u,
                                                                         flag_list(self._flags(u))))
            self.sendPositiveResponse(tag, b"SENDMAIL completed, queued as " + reply.queue_id.encode())

        d.addCallback(done)
        d.addErrback(self._internal_error, tag)
        d.addBoth(lambda _: self._unblock())


def tcp_socket(transport: Any) -> Any:
    """The TCP socket under TRANSPORT (under the TLS wrapper for implicit TLS), or None."""
    from twisted.internet import tcp

    t = transport
    for _ in range(3):
        if isinstance(t, tcp.Connection):
            return t.getHandle()
        t = getattr(t, "transport", None)
    return None


def set_nodelay(sock: Any) -> None:
    """Disable Nagle: an IMAP/POP exchange is many small writes."""
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass


def quick_ack(sock: Any) -> None:
    """ACK what was just read at once (Linux TCP_QUICKACK; the kernel clears it again after use).

    imaplib and others send an APPEND literal and its closing CRLF as two writes
    with Nagle on: the CRLF waits for the ACK of the literal, which a delayed ACK
    holds back 40 ms. Measured: 18 APPENDs/s without this, over 100 with it.
    """
    if sock is not None and _QUICKACK is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        except (OSError, AttributeError):
            pass


_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


def envelope(data: bytes) -> bytes:
    """ENVELOPE (RFC 3501 7.4.2) of a message, built by Twisted from its parsed header."""
    return collapseNestedLists([getEnvelope(ParsedMessage(split_header(data)[0]))])


@implementer(interfaces.IPushProducer)
class _FetchProducer:
    """Writes one FETCH's responses FETCH_BATCH messages at a time, pausing when the transport is full."""

    def __init__(self, server: IMAPServer, tag: bytes, chosen: list[tuple[int, int]], query: list[Any],
                 by_uid: bool, sets_seen: bool) -> None:
        self.server, self.tag, self.chosen = server, tag, chosen
        self.query, self.by_uid, self.sets_seen = query, by_uid, sets_seen
        self.pos = 0
        self.paused = False
        self.stopped = False
        self.scheduled = False

    def start(self) -> None:
        self.server.transport.registerProducer(self, True)
        self._schedule()

    def _schedule(self) -> None:
        if not self.scheduled and not self.paused and not self.stopped:
            self.scheduled = True
            reactor.callLater(0, self._step)  # type: ignore[attr-defined]  # let other sessions run between batches

    def _step(self) -> None:
        self.scheduled = False
        if self.paused or self.stopped:
            return
        server = self.server
        if server.view is None:
            self.stopped = True
            return
        batch = self.chosen[self.pos : self.pos + FETCH_BATCH]
        self.pos += len(batch)
        server._fetch_batch(batch, self.query, self.by_uid, self.sets_seen)
        if self.pos >= len(self.chosen):
            self.stopped = True
            server.transport.unregisterProducer()
            server.sendPositiveResponse(self.tag, b"FETCH completed")
            server._unblock()
            return
        self._schedule()

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._schedule()

    def stopProducing(self) -> None:
        self.stopped = True


def _has_section(p: Any) -> bool:
    return bool(p.empty or p.text or p.header or p.mime or p.part)


def _body_item(p: Any, data: bytes) -> tuple[bytes, bytes]:
    """(response item name, content) for BODY[...] / RFC822 forms of FETCH."""
    if p.type == "rfc822":
        return b"RFC822", data
    if p.type == "rfc822header":
        return b"RFC822.HEADER", split_header(data)[0]
    if p.type == "rfc822text":
        return b"RFC822.TEXT", split_header(data)[1]
    part = b".".join(str(x + 1).encode() for x in p.part)
    found = locate(data, tuple(p.part)) if p.part else (data, True)
    entity, is_message = found if found is not None else (b"", False)
    if p.header:
        h = split_header(entity)[0]
        if p.header.fields:
            kind = b"HEADER.FIELDS.NOT" if p.header.negate else b"HEADER.FIELDS"
            spec = kind + b" (" + b" ".join(f.upper() for f in p.header.fields) + b")"
            content = header_fields(h, list(p.header.fields), bool(p.header.negate))
        else:
            spec, content = b"HEADER", h
    elif p.text:
        spec, content = b"TEXT", split_header(entity)[1]
    elif p.mime:
        # The MIME header of part N is the part's own header (RFC 3501 6.4.5).
        sub = _raw_part(data, tuple(p.part))
        spec, content = b"MIME", split_header(sub)[0] if sub else b""
    else:
        spec, content = b"", entity if is_message else split_header(entity)[1]
    name = b"BODY[" + part + (b"." if part and spec else b"") + spec + b"]"
    if p.partialBegin is not None:
        start = p.partialBegin
        content = content[start:start + p.partialLength]
        name += b"<%d>" % start
    return name, content


def _raw_part(data: bytes, path: tuple[int, ...]) -> bytes | None:
    """The multipart child at PATH including its own MIME header."""
    from services.access.mime import subparts

    entity: bytes | None = data
    for p in path:
        parts = subparts(entity) if entity is not None else None
        if parts is None or p >= len(parts):
            return None
        entity = parts[p]
    return entity


def _wildcard_match(pattern: str, name: str) -> bool:
    """RFC 3501 6.3.8: * matches anything, % anything but the delimiter; INBOX is case-insensitive."""
    import re

    rx = "".join(".*" if c == "*" else f"[^{re.escape(DELIMITER)}]*" if c == "%" else re.escape(c) for c in pattern)
    if name == "INBOX":
        return re.fullmatch(rx, name, re.IGNORECASE) is not None
    return re.fullmatch(rx, name) is not None


def _refusal(reply: Reply) -> bytes:
    return reply.text.encode("utf-8", "replace")
