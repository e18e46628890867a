"""Quotas (RFC 9208 STORAGE and MESSAGE): limits, usage, the check and the 90 % warning.

Usage is the account's index totals (maintained with every insert and delete,
so reading them is O(mailboxes)) plus the files the relay put in INBOX's
``new/`` that no session has indexed yet. The relay runs in another process
and only reads. STORAGE counts RFC822.SIZE octets (CRLF); RFC 9208 §5.1
reports it in units of 1024 octets, which the IMAP server does.

Who enforces: APPEND and COPY through ``MailStore.check_quota`` (``NO
[OVERQUOTA]``), the relay at RCPT (``452 4.2.2``, appliance/policy/quota.py)
and at local delivery (a temporary failure: the message stays queued, and
after the queue lifetime the sender gets a DSN; never a silent drop).
"""

from __future__ import annotations

import os
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote

from appliance.mailstore.maildir import split_name, vsize_in

WARN_AT = 0.9  # share of a limit at which the user is warned once (issue 13)
WARNED_FILE = "appliance-quota-warned"  # present while the warning for the current crossing was sent
_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]?)i?B?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(value: int | str) -> int:
    """Bytes for 12345, "500M", "2G" (binary units); ValueError naming the problem."""
    if isinstance(value, bool):
        raise ValueError("a size is a number of bytes or a string like 2G")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    m = _SIZE.match(value)
    if not m:
        raise ValueError(f"{value!r} is not a size (e.g. 500M, 2G, or a number of bytes)")
    return int(m.group(1)) * _UNITS[m.group(2).upper()]


def format_size(n: int) -> str:
    for unit in ("T", "G", "M", "K"):
        if n and n % _UNITS[unit] == 0:
            return f"{n // _UNITS[unit]}{unit}"
    return str(n)


@dataclass(frozen=True)
class QuotaLimits:
    storage: int = 0  # bytes; 0: unlimited
    messages: int = 0  # 0: unlimited

    @property
    def unlimited(self) -> bool:
        return not self.storage and not self.messages


class QuotaUsage(NamedTuple):
    bytes: int
    messages: int


@dataclass(frozen=True)
class QuotaExceeded:
    resource: str  # "STORAGE" or "MESSAGE" (RFC 9208 §5)
    usage: int
    limit: int

    @property
    def text(self) -> str:
        if self.resource == "STORAGE":
            return f"mailbox full: {self.usage} of {self.limit} bytes used"
        return f"mailbox full: {self.usage} of {self.limit} messages"


def limits_for(account: Any, limit_classes: Any) -> QuotaLimits:
    """The quota of ACCOUNT (appliance.accounts.Account): its own override, else its limit class's."""
    cls = limit_classes.get(account.limit_class) or limit_classes["default"]
    storage = account.quota_storage if getattr(account, "quota_storage", None) is not None else cls.quota_storage
    messages = account.quota_messages if getattr(account, "quota_messages", None) is not None else cls.quota_messages
    return QuotaLimits(storage, messages)


def pending_new(root: Path) -> tuple[int, int]:
    """(bytes, messages) of files in ROOT/new/ (delivered, not yet indexed)."""
    total = count = 0
    try:
        names = os.listdir(root / "new")
    except FileNotFoundError:
        return 0, 0
    for n in names:
        if n.startswith("."):
            continue
        size = vsize_in(split_name(n)[0])
        if size is None:
            try:
                size = os.stat(root / "new" / n).st_size
            except FileNotFoundError:
                continue
        total += size
        count += 1
    return total, count


def _scan(root: Path) -> tuple[int, int]:
    """Usage of a Maildir without an index (no session ever opened it): every folder's cur/."""
    total = count = 0
    for d in [root, *(root / e for e in os.listdir(root) if e.startswith(".") and e not in (".", ".."))]:
        try:
            names = os.listdir(d / "cur")
        except (FileNotFoundError, NotADirectoryError):
            continue
        for n in names:
            size = vsize_in(split_name(n)[0])
            if size is None:
                try:
                    size = os.stat(d / "cur" / n).st_size
                except FileNotFoundError:
                    continue
            total += size
            count += 1
    return total, count


def usage(root: str | Path) -> QuotaUsage:
    """The account's usage, read without opening the store (the relay's view)."""
    from appliance.mailstore.index import INDEX_FILE

    root = Path(root)
    if not root.is_dir():
        return QuotaUsage(0, 0)
    b = m = None
    index = root / INDEX_FILE
    if index.exists():
        # Another user (root running `appliance status`) must not create the -wal/-shm files: the
        # service could not open them afterwards. It reads the main file as it is (maybe slightly old).
        foreign = os.geteuid() != index.stat().st_uid
        uri = f"file:{quote(str(index))}?mode=ro" + ("&immutable=1" if foreign else "")
        try:
            db = sqlite3.connect(uri, uri=True, timeout=10)
            try:
                b, m = db.execute("SELECT coalesce(sum(bytes), 0), coalesce(sum(messages), 0) FROM mailboxes").fetchone()
            finally:
                db.close()
        except sqlite3.Error:
            b = m = None  # unreadable: the store rebuilds it at the next login; count the files meanwhile
    if b is None or m is None:
        b, m = _scan(root)
    nb, nm = pending_new(root)
    return QuotaUsage(b + nb, m + nm)


def quota_error(used: tuple[int, int], limits: QuotaLimits, add_bytes: int, add_messages: int) -> QuotaExceeded | None:
    if limits.storage and used[0] + add_bytes > limits.storage:
        return QuotaExceeded("STORAGE", used[0], limits.storage)
    if limits.messages and used[1] + add_messages > limits.messages:
        return QuotaExceeded("MESSAGE", used[1], limits.messages)
    return None


def check(root: str | Path, limits: QuotaLimits, add_bytes: int, add_messages: int = 1) -> QuotaExceeded | None:
    """None if ROOT can take ADD_BYTES in ADD_MESSAGES more messages, else what would be exceeded."""
    if limits.unlimited:
        return None
    return quota_error(usage(root), limits, add_bytes, add_messages)


def share(used: tuple[int, int], limits: QuotaLimits) -> float:
    """The larger of the used shares of the two resources (0.0 when unlimited)."""
    parts = []
    if limits.storage:
        parts.append(used[0] / limits.storage)
    if limits.messages:
        parts.append(used[1] / limits.messages)
    return max(parts, default=0.0)


def warning_due(root: str | Path, limits: QuotaLimits, used: tuple[int, int]) -> bool:
    """True exactly once per crossing of 90 %: the marker is set now and cleared when usage drops below."""
    marker = Path(root) / WARNED_FILE
    if share(used, limits) < WARN_AT:
        if marker.exists():
            marker.unlink(missing_ok=True)
        return False
    try:
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # atomic: one deliverer wins
    except FileExistsError:
        return False
    os.close(fd)
    return True


def warning_message(address: str, used: tuple[int, int], limits: QuotaLimits, postmaster: str) -> bytes:
    """The warning delivered into the INBOX (RFC 5322, LF line ends as in the Maildir)."""
    from email.message import EmailMessage
    from email.utils import formatdate, make_msgid

    lines = []
    if limits.storage:
        lines.append(f"Storage: {format_size(used[0])} of {format_size(limits.storage)} "
                     f"({100 * used[0] // limits.storage} %)")
    if limits.messages:
        lines.append(f"Messages: {used[1]} of {limits.messages} ({100 * used[1] // limits.messages} %)")
    msg = EmailMessage()
    msg["From"] = postmaster or f"postmaster@{address.rsplit('@', 1)[-1]}"
    msg["To"] = address
    msg["Subject"] = "Your mailbox is almost full"
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(domain=address.rsplit("@", 1)[-1])
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies to this
    msg.set_content("Your mailbox is using more than 90 % of its quota:\n\n" + "\n".join(lines) +
                    "\n\nWhen it is full, new mail waits at the sender's side and is eventually returned.\n"
                    "Please delete or archive old messages.\n")
    return bytes(msg).replace(b"\r\n", b"\n")
