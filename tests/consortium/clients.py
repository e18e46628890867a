"""Mail clients the consortium tests run INSIDE a namespace (`ip netns exec NS python -m ...`).

Each subcommand prints one JSON object on stdout. They are thin wrappers over
the standard library's smtplib, imaplib and poplib (real client code, the same
a user's script would use), so the network rule holds: the harness starts them
in `home`, `outsider` or a member's namespace, never in the machine's own.
"""

from __future__ import annotations

import argparse
import imaplib
import json
import poplib
import random
import re
import smtplib
import socket
import ssl
import sys
import threading
import time
import uuid
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any


def tls_context(cafile: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=cafile)
    # Dev boxes' self-signed certificates name the box's address, but clients
    # address boxes by IP; trust is the pinned CA file, not the name.
    ctx.check_hostname = False
    return ctx


def make_message(sender: str, to: list[str], subject: str, body: str, tag: str = "", from_header: str = "") -> bytes:
    m = EmailMessage()
    m["From"] = from_header or sender
    m["To"] = ", ".join(to)
    m["Subject"] = subject
    m["Date"] = formatdate(localtime=False)
    m["Message-ID"] = make_msgid(domain=sender.split("@")[-1])
    if tag:
        m["X-Consortium-Tag"] = tag
    m.set_content(body)
    return m.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def cmd_greeting(a: argparse.Namespace) -> dict[str, Any]:
    """Connect, read the greeting; then EHLO and QUIT if the greeting was 220."""
    with socket.create_connection((a.host, a.port), timeout=20) as s:
        f = s.makefile("rb")
        lines = []
        while True:
            line = f.readline().decode(errors="replace").rstrip("\r\n")
            lines.append(line)
            if len(line) < 4 or line[3] != "-":
                break
        code = int(lines[-1][:3]) if lines[-1][:3].isdigit() else 0
        closed = False
        if code != 220:
            # The server must close after a 554 greeting (RFC 5321 3.1).
            s.settimeout(10)
            try:
                closed = s.recv(1) == b""
            except (ConnectionResetError, BrokenPipeError):
                closed = True
            except TimeoutError:
                closed = False
        return {"code": code, "text": "\n".join(lines), "closed": closed}


def _smtp(a: argparse.Namespace) -> smtplib.SMTP:
    ctx = tls_context(a.cafile)
    if a.tls == "implicit":
        s: smtplib.SMTP = smtplib.SMTP_SSL(a.host, a.port, timeout=30, context=ctx)
    else:
        s = smtplib.SMTP(a.host, a.port, timeout=30)
    s.ehlo("client.test")
    if a.tls == "starttls":
        s.starttls(context=ctx)
        s.ehlo("client.test")
    if a.user:
        s.login(a.user, a.password)
    return s


def cmd_smtp_send(a: argparse.Namespace) -> dict[str, Any]:
    """Send COUNT messages in one session; report each message's reply (never retries)."""
    results = []
    try:
        s = _smtp(a)
    except smtplib.SMTPResponseException as exc:
        return {"error": "session", "code": exc.smtp_code, "text": exc.smtp_error.decode(errors="replace"),
                "results": []}
    with s:
        for i in range(a.count):
            tag = f"{a.tag}-{i}" if a.tag and a.count > 1 else a.tag
            msg = make_message(a.sender, a.to, f"{a.subject} {i}", a.body, tag, a.from_header)
            try:
                code, text = s.mail(a.sender)
                bad = (code, text) if code >= 300 else None
                for r in a.to if bad is None else []:
                    code, text = s.rcpt(r)
                    if code >= 300:
                        bad = (code, text)
                        break
                if bad:
                    s.rset()
                    results.append({"tag": tag, "code": bad[0], "text": bad[1].decode(errors="replace"),
                                    "stage": "envelope"})
                    continue
                code, text = s.data(msg)
                results.append({"tag": tag, "code": code, "text": text.decode(errors="replace"), "stage": "data"})
            except smtplib.SMTPResponseException as exc:
                results.append({"tag": tag, "code": exc.smtp_code, "text": exc.smtp_error.decode(errors="replace"),
                                "stage": "mail"})
                try:
                    s.rset()
                except smtplib.SMTPException:
                    break
    return {"results": results}


def _imap(a: argparse.Namespace) -> imaplib.IMAP4:
    m = imaplib.IMAP4(a.host, a.port, timeout=30)
    m.starttls(ssl_context=tls_context(a.cafile))
    m.login(a.user, a.password)
    return m


def _dec(data: Any) -> Any:
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    if isinstance(data, (list, tuple)):
        return [_dec(d) for d in data]
    return data


def cmd_imap_sendmail(a: argparse.Namespace) -> dict[str, Any]:
    """Store the draft in Sent with $SubmitPending, then UID SENDMAIL it (draft-kundrat-imap-submit)."""
    imaplib.Commands["SENDMAIL"] = ("SELECTED",)
    m = _imap(a)
    msg = make_message(a.sender, a.to, a.subject, a.body, a.tag, a.from_header)
    typ, data = m.append("Sent", r"(\Seen $SubmitPending)", None, msg)
    out: dict[str, Any] = {"capability": _dec(m.capabilities), "append": [typ, _dec(data)]}
    match = re.search(rb"APPENDUID \d+ (\d+)", data[0] or b"")
    if typ != "OK" or not match:
        m.logout()
        return out
    m.select("Sent")
    uid = match.group(1).decode()
    try:
        typ, data = m.uid("SENDMAIL", uid)
        out["sendmail"] = [typ, _dec(data)]
    except imaplib.IMAP4.error as exc:
        out["sendmail"] = ["NO", str(exc)]
    typ, data = m.uid("FETCH", uid, "(FLAGS)")
    out["flags"] = _dec(data)
    m.logout()
    return out


def cmd_imap_outbox(a: argparse.Namespace) -> dict[str, Any]:
    """APPEND the message to the Outbox folder: the server sends it (Courier-IMAP style)."""
    m = _imap(a)
    msg = make_message(a.sender, a.to, a.subject, a.body, a.tag, a.from_header)
    try:
        typ, data = m.append(a.outbox, None, None, msg)
        out = {"append": [typ, _dec(data)]}
    except imaplib.IMAP4.error as exc:
        out = {"append": ["NO", str(exc)]}
    m.logout()
    return out


def cmd_imap_login(a: argparse.Namespace) -> dict[str, Any]:
    try:
        m = _imap(a)
    except imaplib.IMAP4.error as exc:
        return {"ok": False, "text": str(exc)}
    m.logout()
    return {"ok": True}


def _pop(a: argparse.Namespace) -> poplib.POP3:
    p = poplib.POP3(a.host, a.port, timeout=30)
    p.stls(context=tls_context(a.cafile))
    p.user(a.user)
    p.pass_(a.password)
    return p


def cmd_pop_xmit(a: argparse.Namespace) -> dict[str, Any]:
    """XTND XMIT (qpopper/Eudora): the dot-stuffed message after `+OK`, then the server's verdict."""
    p = _pop(a)
    msg = make_message(a.sender, a.to, a.subject, a.body, a.tag, a.from_header)
    p._putcmd("XTND XMIT")
    first = p._getline()[0].decode(errors="replace")
    out: dict[str, Any] = {"start": first}
    if first.startswith("+OK"):
        for line in msg.split(b"\r\n"):
            p._putline(b"." + line if line.startswith(b".") else line)
        p._putline(b".")
        out["result"] = p._getline()[0].decode(errors="replace")
    p.quit()
    return out


def cmd_pop_fetch(a: argparse.Namespace) -> dict[str, Any]:
    """Retrieve every message; return each one's headers of interest and body text."""
    p = _pop(a)
    count = p.stat()[0]
    msgs = []
    for i in range(1, count + 1):
        lines = p.retr(i)[1]
        raw = b"\r\n".join(lines).decode(errors="replace")
        head, _, body = raw.partition("\r\n\r\n")
        headers: dict[str, list[str]] = {}
        for h in re.split(r"\r\n(?![ \t])", head):
            k, _, v = h.partition(":")
            headers.setdefault(k.strip().lower(), []).append(v.strip())
        msgs.append({"headers": headers, "body": body})
    p.quit()
    return {"count": count, "messages": msgs}


def cmd_load(a: argparse.Namespace) -> dict[str, Any]:
    """Several senders submit COUNT messages in total while the relay is being killed.

    A message counts as accepted only when DATA got 250; a broken connection or a
    4xx means "not accepted" and the sender tries that message again with a new
    tag, exactly as a real client would. Bounded by COUNT messages and by DEADLINE
    seconds.
    """
    senders = json.loads(a.senders)  # [[login, password], ...]
    ctx = tls_context(a.cafile)
    lock = threading.Lock()
    next_index = iter(range(a.count))
    accepted: list[str] = []
    refused: dict[str, int] = {}
    errors: dict[str, int] = {}
    deadline = time.monotonic() + a.deadline

    def bump(d: dict[str, int], k: str) -> None:
        with lock:
            d[k] = d.get(k, 0) + 1

    def worker(login: str, password: str) -> None:
        s: smtplib.SMTP | None = None
        while time.monotonic() < deadline:
            with lock:
                i = next(next_index, None)
            if i is None:
                break
            while time.monotonic() < deadline:
                tag = f"{a.tag}-{i}-{uuid.uuid4().hex[:8]}"
                try:
                    if s is None:
                        s = smtplib.SMTP(a.host, a.port, timeout=30)
                        s.ehlo("load.test")
                        s.starttls(context=ctx)
                        s.ehlo("load.test")
                        s.login(login, password)
                    to = random.choice(a.to)
                    msg = make_message(login, [to], f"load {i}", f"message {i}\n", tag)
                    s.sendmail(login, [to], msg)
                    with lock:
                        accepted.append(tag)
                        if a.progress:
                            # The test's killer reads this to land each kill mid-load.
                            with open(a.progress, "w") as fh:
                                fh.write(str(len(accepted)))
                    # Pace the senders so that the kills, not the clock, decide how the load ends.
                    time.sleep(len(senders) / a.rate)
                    break
                except smtplib.SMTPResponseException as exc:
                    bump(refused, str(exc.smtp_code))
                    if exc.smtp_code >= 500:
                        # A 5xx for our own customer's mail is a failure the test must see.
                        with lock:
                            errors[f"5xx {exc.smtp_code} {exc.smtp_error[:60]!r}"] = 1
                        break
                    s = _drop(s)
                    time.sleep(0.2)
                except (OSError, smtplib.SMTPException) as exc:
                    bump(errors, type(exc).__name__)
                    s = _drop(s)
                    time.sleep(0.2)
        _drop(s)

    threads = [threading.Thread(target=worker, args=(login, pw), daemon=True) for login, pw in senders]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(1.0, deadline - time.monotonic() + 30))
    return {"accepted": accepted, "refused": refused, "errors": errors,
            "timed_out": time.monotonic() > deadline}


def _drop(s: smtplib.SMTP | None) -> None:
    if s is None:
        return None
    try:
        s.close()
    except OSError:
        pass
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="clients")
    sub = p.add_subparsers(dest="cmd", required=True)

    def conn(x: argparse.ArgumentParser, login: bool = True) -> None:
        x.add_argument("--host", required=True)
        x.add_argument("--port", type=int, required=True)
        x.add_argument("--cafile", default="")
        if login:
            x.add_argument("--user", default="")
            x.add_argument("--password", default="")

    def message(x: argparse.ArgumentParser) -> None:
        x.add_argument("--from", dest="sender", required=True)
        x.add_argument("--from-header", default="")
        x.add_argument("--to", action="append", required=True)
        x.add_argument("--subject", default="consortium test")
        x.add_argument("--body", default="Hello across the consortium.\n")
        x.add_argument("--tag", default="")

    g = sub.add_parser("greeting")
    conn(g, login=False)
    s = sub.add_parser("smtp-send")
    conn(s)
    message(s)
    s.add_argument("--tls", choices=("starttls", "implicit", "none"), default="starttls")
    s.add_argument("--count", type=int, default=1)
    for name in ("imap-sendmail", "imap-outbox", "pop-xmit"):
        x = sub.add_parser(name)
        conn(x)
        message(x)
        x.add_argument("--outbox", default="Outbox")
    for name in ("imap-login", "pop-fetch"):
        conn(sub.add_parser(name))
    ld = sub.add_parser("load")
    conn(ld, login=False)
    ld.add_argument("--senders", required=True, help="JSON list of [login, password]")
    ld.add_argument("--to", action="append", required=True)
    ld.add_argument("--count", type=int, required=True)
    ld.add_argument("--deadline", type=float, default=300)
    ld.add_argument("--progress", default="", help="file to keep the count of accepted messages in")
    ld.add_argument("--rate", type=float, default=1000.0, help="messages per second, all senders together")
    ld.add_argument("--tag", default="load")
    a = p.parse_args(argv)
    fn = {"greeting": cmd_greeting, "smtp-send": cmd_smtp_send, "imap-sendmail": cmd_imap_sendmail,
          "imap-outbox": cmd_imap_outbox, "imap-login": cmd_imap_login, "pop-xmit": cmd_pop_xmit,
          "pop-fetch": cmd_pop_fetch, "load": cmd_load}[a.cmd]
    json.dump(fn(a), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
