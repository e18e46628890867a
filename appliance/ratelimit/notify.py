"""Operator notifications: a message dropped straight into the postmaster's Maildir.

The postmaster is normally an address of a local domain; the message is written
to the address's Maildir (``appliance.mailstore.account_maildir``, the same
escaped path local delivery and the access service use) the Maildir way (``tmp/``, fsync, rename into
``new/``, fsync the directory), so it needs neither the queue nor a running
delivery worker. A postmaster outside the box's domains cannot be reached this
way: the event is then only logged (and shown by `appliance status`).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path

from appliance.config import Config
from appliance.fsutil import fsync_dir

log = logging.getLogger("appliance.ratelimit")


def postmaster_maildir(cfg: Config) -> Path | None:
    from appliance.addresses import AddressError
    from appliance.mailstore.paths import account_maildir

    address = cfg.box.postmaster_address
    local, _, domain = address.rpartition("@")
    if domain.lower() not in cfg.box.domains or not local:
        return None
    try:
        return account_maildir(cfg.paths.mail_dir, address)
    except AddressError:
        return None


def notify_postmaster(cfg: Config, subject: str, body: str) -> Path | None:
    """Deliver a notification to the postmaster's Maildir; returns the file, or None if not local."""
    # Here, not at the top: importing the delivery package costs the CLI's start-up ~70 ms.
    from appliance.delivery.maildir import ensure_maildir, unique_name

    maildir = postmaster_maildir(cfg)
    if maildir is None:
        log.warning("postmaster %s is not local: notification only logged: %s", cfg.box.postmaster_address, subject)
        return None
    msg = EmailMessage()
    msg["From"] = f"Mail appliance <MAILER-DAEMON@{cfg.box.hostname}>"
    msg["To"] = cfg.box.postmaster_address
    msg["Subject"] = subject
    msg["Date"] = format_datetime(dt.datetime.now(dt.UTC))
    msg["Message-ID"] = make_msgid(domain=cfg.box.hostname)
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies to this
    msg.set_content(body)
    data = msg.as_bytes().replace(b"\r\n", b"\n")
    ensure_maildir(maildir)
    name = unique_name(len(data))
    tmp = maildir / "tmp" / name
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    final = maildir / "new" / name
    os.rename(tmp, final)
    fsync_dir(maildir / "new")
    return final
