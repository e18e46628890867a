"""Mail clients run inside a demo machine (`vagrant ssh M -c 'sudo python3 - ...' < this file`).

Stdlib only (the machine's /usr/bin/python3). Each connects to the machine's own listeners
on 127.0.0.1 with STARTTLS, requires the certificate the box serves to be the one in its
config and to name the box (CN and SAN = box.hostname), and prints one JSON line.

  send HOSTNAME CERT LOGIN PASSWORD FROM TO TOKEN   IMAP: APPEND to Sent ($SubmitPending), UID SENDMAIL
  fetch HOSTNAME CERT LOGIN PASSWORD TOKEN SECONDS  POP3: poll until a message with TOKEN is there
"""

from __future__ import annotations

import imaplib
import json
import poplib
import re
import ssl
import sys
import time
from email.utils import formatdate, make_msgid

imaplib.Commands.setdefault("SENDMAIL", ("SELECTED",))


def context(cert: str) -> ssl.SSLContext:
    # The box's own self-signed certificate is the only trust anchor. The connection goes to
    # 127.0.0.1, so the name is checked on the presented certificate below, not by address.
    ctx = ssl.create_default_context(cafile=cert)
    ctx.check_hostname = False
    return ctx


def names(peer: dict) -> dict[str, object]:
    cn = [v for rdn in peer.get("subject", ()) for k, v in rdn if k == "commonName"]
    san = sorted(v for k, v in peer.get("subjectAltName", ()) if k == "DNS")
    return {"cn": cn[0] if cn else "", "dns": san}


def send(hostname: str, cert: str, login: str, password: str, sender: str, rcpt: str, token: str) -> dict:
    m = imaplib.IMAP4("127.0.0.1", 143, timeout=60)
    m.starttls(ssl_context=context(cert))
    presented = names(m.sock.getpeercert())
    m.login(login, password)
    msg = (f"From: {sender}\r\nTo: {rcpt}\r\nSubject: vagrant demo {token}\r\nDate: {formatdate()}\r\n"
           f"Message-ID: {make_msgid(domain=hostname)}\r\n\r\nSent by UID SENDMAIL on {hostname}: {token}\r\n")
    typ, data = m.append("Sent", "($SubmitPending)", None, msg.encode())
    if typ != "OK":
        raise SystemExit(f"APPEND: {typ} {data}")
    uid = re.search(rb"APPENDUID \d+ (\d+)", data[0]).group(1).decode()
    m.select("Sent")
    typ, data = m.uid("SENDMAIL", uid)
    flags = m.uid("FETCH", uid, "(FLAGS)")[1][0].decode()
    m.logout()
    return {"sendmail": typ, "reply": [d.decode(errors="replace") for d in data if isinstance(d, bytes)],
            "flags": flags, "cert": presented}


def fetch(hostname: str, cert: str, login: str, password: str, token: str, seconds: str) -> dict:
    deadline = time.monotonic() + float(seconds)
    polls = 0
    while True:
        polls += 1
        p = poplib.POP3("127.0.0.1", 110, timeout=60)
        p.stls(context(cert))
        presented = names(p.sock.getpeercert())
        p.user(login)
        p.pass_(password)
        count = len(p.list()[1])
        for i in range(1, count + 1):
            lines = p.retr(i)[1]
            text = b"\r\n".join(lines).decode(errors="replace")
            if token in text:
                p.quit()
                headers = text.split("\r\n\r\n", 1)[0]
                received = re.findall(r"(?ms)^Received:.*?(?=^\S)", headers + "\r\nX:")
                return {"found": True, "polls": polls, "cert": presented, "received": received,
                        "message": text[:4000]}
        p.quit()
        if time.monotonic() > deadline:
            return {"found": False, "polls": polls, "cert": presented, "messages": count}
        time.sleep(3)


if __name__ == "__main__":
    action, args = sys.argv[1], sys.argv[2:]
    result = send(*args) if action == "send" else fetch(*args)
    print(json.dumps(result))
