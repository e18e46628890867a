"""Delivery Status Notifications (RFC 3464, multipart/report RFC 6522).

Sent with the null envelope sender <> so that a DSN is never answered by
another DSN (RFC 5321 4.5.5), and never sent to a null sender.
"""

from __future__ import annotations

import email.utils
import secrets
import time
from collections.abc import Sequence
from typing import Literal

from appliance.delivery.outcome import Outcome

Kind = Literal["failure", "delay"]
HEADER_LIMIT = 64 * 1024


def _original_headers(data: bytes) -> bytes:
    end = data.find(b"\r\n\r\n")
    if end < 0:
        end = data.find(b"\n\n")
    head = data if end < 0 else data[:end]
    return head[:HEADER_LIMIT].replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _date(ts: float) -> str:
    return email.utils.formatdate(ts, localtime=False)


def _oneline(text: str) -> str:
    return " ".join(text.replace("\r", " ").replace("\n", " ").split())


def build(
    kind: Kind,
    *,
    reporting_mta: str,
    postmaster: str,
    sender: str,
    queue_id: str,
    arrival: float,
    outcomes: Sequence[Outcome],
    original: bytes,
    retry_until: float | None = None,
) -> bytes:
    """The DSN message (CRLF lines) to send to SENDER about OUTCOMES."""
    boundary = f"=_dsn_{secrets.token_hex(12)}"
    now = time.time()
    if kind == "failure":
        subject = "Undelivered Mail Returned to Sender"
        intro = (
            f"This is the mail system at {reporting_mta}.\r\n\r\n"
            "Your message could not be delivered to one or more recipients.\r\n"
            "It has been returned below (headers only).\r\n"
        )
    else:
        subject = "Delayed Mail (still being retried)"
        until = f" until {_date(retry_until)}" if retry_until else ""
        intro = (
            f"This is the mail system at {reporting_mta}.\r\n\r\n"
            "Your message could not be delivered yet to one or more recipients.\r\n"
            f"It will be retried{until}; you do not need to send it again.\r\n"
        )
    human = "".join(f"\r\n<{o.recipient}>: {_oneline(o.text)}" for o in outcomes)
    # RFC 3464 2.2: per-message fields, then one block per recipient.
    per_msg = [f"Reporting-MTA: dns; {reporting_mta}", f"X-Appliance-Queue-ID: {queue_id}",
               f"Arrival-Date: {_date(arrival)}"]
    blocks = ["\r\n".join(per_msg)]
    for o in outcomes:
        f = [
            f"Final-Recipient: rfc822; {o.recipient}",
            f"Action: {'failed' if kind == 'failure' else 'delayed'}",
            f"Status: {o.enhanced}",
        ]
        if o.remote:
            f.append(f"Remote-MTA: {o.remote}")
        f.append(f"Diagnostic-Code: smtp; {o.code} {_oneline(o.text)}")
        f.append(f"Last-Attempt-Date: {_date(now)}")
        if kind == "delay" and retry_until:
            f.append(f"Will-Retry-Until: {_date(retry_until)}")
        blocks.append("\r\n".join(f))
    status = "\r\n\r\n".join(blocks) + "\r\n"
    headers = (
        f"From: Mail Delivery System <{postmaster}>\r\n"
        f"To: <{sender}>\r\n"
        f"Subject: {subject}\r\n"
        f"Date: {_date(now)}\r\n"
        f"Message-ID: <{queue_id}.{secrets.token_hex(6)}.dsn@{reporting_mta}>\r\n"
        "Auto-Submitted: auto-replied\r\n"  # RFC 3834
        "MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"\r\n'
    )
    body = (
        "\r\nThis is a MIME-encapsulated message.\r\n\r\n"
        f"--{boundary}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Description: Notification\r\n\r\n"
        f"{intro}{human}\r\n\r\n"
        f"--{boundary}\r\n"
        "Content-Type: message/delivery-status\r\n"
        "Content-Description: Delivery report\r\n\r\n"
        f"{status}\r\n"
        f"--{boundary}\r\n"
        "Content-Type: text/rfc822-headers\r\n"
        "Content-Description: Undelivered message headers\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    return headers.encode() + body + _original_headers(original) + b"\r\n" + tail
