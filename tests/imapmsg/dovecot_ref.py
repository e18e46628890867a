"""Ask a private Dovecot (tests/access/dovecot.py) what it answers for a set of messages.

APPENDs each message to an empty INBOX and returns the raw FETCH data items, so the
differential tests can compare Dovecot's bytes with services.access.imapmsg's.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from appliance.tlsfiles import make_self_signed
from tests.access.dovecot import Dovecot, start_dovecot
from tests.access.imapdiff import RawIMAP

USER, PASSWORD = "probe", "probe password 1"


@contextmanager
def dovecot(tmp: Path) -> Iterator[Dovecot]:
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    make_self_signed(cert, key, ["127.0.0.1"])
    dv = start_dovecot({USER: PASSWORD}, str(cert), str(key))
    try:
        yield dv
    finally:
        dv.stop()


class Session:
    """One logged-in connection with INBOX selected."""

    def __init__(self, dv: Dovecot) -> None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        self.imap = RawIMAP("127.0.0.1", dv.imap_port, ctx)
        _, ok = self.imap.command(b'LOGIN "%s" "%s"' % (USER.encode(), PASSWORD.encode()))
        assert ok.startswith(b"OK"), ok
        _, ok = self.imap.command(b"SELECT INBOX")
        assert ok.startswith(b"OK"), ok

    def append(self, data: bytes, date: str = "17-Jul-1996 02:44:25 -0700", mailbox: str = "INBOX") -> int:
        _, ok = self.imap.command(b'APPEND %s () "%s"' % (mailbox.encode(), date.encode()), data)
        assert ok.startswith(b"OK"), ok
        m = re.search(rb"APPENDUID \d+ (\d+)", ok)
        assert m, ok
        return int(m.group(1))

    def fetch(self, uid: int, item: str) -> bytes:
        """The value of ONE fetch ITEM for UID, exactly as Dovecot wrote it (literals as {n}CRLF data)."""
        wire = item.replace("BODY[", "BODY.PEEK[").replace("BINARY[", "BINARY.PEEK[")
        untagged, ok = self.imap.command(b"UID FETCH %d (%s)" % (uid, wire.encode()))
        assert ok.startswith(b"OK"), (item, ok)
        return self.fetch_value(untagged)

    @staticmethod
    def fetch_value(untagged: list[bytes]) -> bytes:
        """The value of the single item in the FETCH response among UNTAGGED."""
        for r in untagged:
            m = re.match(rb"\* \d+ FETCH \((.*)\)$", r, re.S)
            if m is None:
                continue
            body = m.group(1)
            # Dovecot puts UID first for UID FETCH; drop it and the item name.
            body = re.sub(rb"^UID \d+ ", b"", body)
            body = re.sub(rb" UID \d+$", b"", body)
            name = re.match(rb"[^ \[]+(\[[^\]]*\])?(<\d+>)?", body)
            assert name is not None
            return body[name.end() + 1 :]
        raise AssertionError(f"no FETCH response in {untagged!r}")

    def command(self, cmd: str) -> tuple[list[bytes], bytes]:
        return self.imap.command(cmd.encode())

    def close(self) -> None:
        self.imap.close()
