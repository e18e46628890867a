"""TLS-RPT (RFC 8460): results counted per policy domain, and the daily aggregate report.

Every outbound TLS session to a host under a policy (DANE or MTA-STS) adds one to a row
of STATE_DIR/tlsrpt.sqlite3, keyed by UTC day, policy domain, policy, MX host, result type
and receiving address. ``build`` turns one day of one domain into the JSON of RFC 8460
4.4, ``message`` into the mail of 5.3 (multipart/report; report-type="tlsrpt", the JSON
gzipped as application/tlsrpt+gzip). ``appliance tlsrpt send`` (appliance/cli/tlsrpt.py)
looks up ``_smtp._tls.DOMAIN`` (3) and queues one report per ``rua=mailto:``.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import gzip
import json
import sqlite3
import threading
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from appliance.sqlite_wal import enable_wal

DB_NAME = "tlsrpt.sqlite3"
_lock = threading.Lock()  # one writer at a time from the delivery threads
SCHEMA = """
CREATE TABLE IF NOT EXISTS result (
    day TEXT NOT NULL, domain TEXT NOT NULL, policy_type TEXT NOT NULL, policy TEXT NOT NULL,
    mx_host TEXT NOT NULL, result_type TEXT NOT NULL, receiving_ip TEXT NOT NULL, detail TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (day, domain, policy_type, policy, mx_host, result_type, receiving_ip));
CREATE TABLE IF NOT EXISTS sent (day TEXT NOT NULL, domain TEXT NOT NULL, rua TEXT NOT NULL, report_id TEXT NOT NULL,
    PRIMARY KEY (day, domain, rua));
"""


@dataclass(frozen=True)
class Result:
    domain: str
    policy_type: str  # tlsa | sts | no-policy-found
    policy_strings: tuple[str, ...]
    mx_host: str
    result_type: str  # "" for a successful session, else an RFC 8460 4.3 result type
    receiving_ip: str = ""
    detail: str = ""


def db_path(state_dir: str | Path) -> str:
    return str(Path(state_dir) / DB_NAME)


def _open(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=10)
    enable_wal(db)
    db.execute("PRAGMA synchronous=NORMAL")  # counts, not mail: a crash may lose the last few
    db.executescript(SCHEMA)
    return db


def record(path: str, r: Result, when: dt.datetime | None = None) -> None:
    day = (when or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%d")
    with _lock:
        db = _open(path)
        try:
            with db:
                db.execute(
                    "INSERT INTO result VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1) ON CONFLICT DO UPDATE SET "
                    "count = count + 1, detail = excluded.detail",
                    (day, r.domain, r.policy_type, json.dumps(list(r.policy_strings)), r.mx_host, r.result_type,
                     r.receiving_ip, r.detail[:300]))
        finally:
            db.close()


def domains(path: str, day: str) -> list[str]:
    db = _open(path)
    try:
        return [row[0] for row in db.execute("SELECT DISTINCT domain FROM result WHERE day = ? ORDER BY 1", (day,))]
    finally:
        db.close()


def build(path: str, day: str, domain: str, *, organization: str, contact: str, report_id: str) -> dict[str, Any]:
    """The RFC 8460 4.4 report for DOMAIN on DAY (UTC, YYYY-MM-DD)."""
    db = _open(path)
    try:
        rows = db.execute("SELECT policy_type, policy, mx_host, result_type, receiving_ip, detail, count FROM result "
                          "WHERE day = ? AND domain = ? ORDER BY 1, 2, 3, 4, 5", (day, domain)).fetchall()
    finally:
        db.close()
    start = dt.datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=dt.UTC)
    policies: dict[tuple[str, str, str], dict[str, Any]] = {}
    for ptype, pstrings, mx, rtype, ip, detail, count in rows:
        # One policy entry per policy and MX host (4.4: "mx-host" names the host the policy applied to).
        p = policies.setdefault((ptype, pstrings, mx), {
            "policy": {"policy-type": ptype, "policy-string": json.loads(pstrings), "policy-domain": domain,
                       "mx-host": mx},
            "summary": {"total-successful-session-count": 0, "total-failure-session-count": 0},
            "failure-details": [],
        })
        if not rtype:
            p["summary"]["total-successful-session-count"] += count
            continue
        p["summary"]["total-failure-session-count"] += count
        fd: dict[str, Any] = {"result-type": rtype, "receiving-mx-hostname": mx, "failed-session-count": count,
                              "failure-reason-code": detail}
        if ip:
            fd["receiving-ip"] = ip
        p["failure-details"].append(fd)
    for p in policies.values():
        if not p["failure-details"]:
            del p["failure-details"]
    return {
        "organization-name": organization,
        "date-range": {"start-datetime": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
                       "end-datetime": (start + dt.timedelta(days=1) - dt.timedelta(seconds=1))
                       .strftime("%Y-%m-%dT%H:%M:%SZ")},
        "contact-info": contact,
        "report-id": report_id,
        "policies": list(policies.values()),
    }


def ruas(txt_values: list[str]) -> list[str]:
    """The mailto: addresses of the one ``v=TLSRPTv1`` record (RFC 8460 3); https rua is not built."""
    ours = [v for v in txt_values if v.replace(" ", "").startswith("v=TLSRPTv1;")]
    if len(ours) != 1:
        return []
    tags = dict(t.strip().partition("=")[::2] for t in ours[0].split(";") if "=" in t)
    out = []
    for uri in tags.get("rua", "").split(","):
        uri = uri.strip()
        if uri.lower().startswith("mailto:") and "@" in uri:
            out.append(email.utils.unquote(uri[7:].split("?", 1)[0]))
    return out


def message(report: dict[str, Any], *, domain: str, submitter: str, sender: str, rua: str) -> bytes:
    """The report mail of RFC 8460 5.3."""
    start = dt.datetime.strptime(report["date-range"]["start-datetime"], "%Y-%m-%dT%H:%M:%SZ")
    end = dt.datetime.strptime(report["date-range"]["end-datetime"], "%Y-%m-%dT%H:%M:%SZ")
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = rua
    msg["Subject"] = f"Report Domain: {domain} Submitter: {submitter} Report-ID: <{report['report-id']}>"
    msg["Date"] = email.utils.formatdate(usegmt=True)
    msg["Message-ID"] = f"<{report['report-id']}>"
    msg["TLS-Report-Domain"] = domain
    msg["TLS-Report-Submitter"] = submitter
    msg.set_content(f"This is an aggregate TLS report (RFC 8460) from {submitter} for {domain}.\n")
    # 5.1: sender!policy-domain!begin-timestamp!end-timestamp.json.gz
    name = f"{submitter}!{domain}!{int(start.replace(tzinfo=dt.UTC).timestamp())}!" \
           f"{int(end.replace(tzinfo=dt.UTC).timestamp())}.json.gz"
    body = gzip.compress(json.dumps(report, indent=1).encode(), mtime=0)
    msg.add_attachment(body, maintype="application", subtype="tlsrpt+gzip", filename=name)
    msg.replace_header("Content-Type", msg["Content-Type"].replace("multipart/mixed", "multipart/report"))
    msg.set_param("report-type", "tlsrpt")
    return msg.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def mark_sent(path: str, day: str, domain: str, rua: str, report_id: str) -> None:
    db = _open(path)
    try:
        with db:
            db.execute("INSERT OR REPLACE INTO sent VALUES (?, ?, ?, ?)", (day, domain, rua, report_id))
    finally:
        db.close()


def was_sent(path: str, day: str, domain: str, rua: str) -> bool:
    db = _open(path)
    try:
        return db.execute("SELECT 1 FROM sent WHERE day = ? AND domain = ? AND rua = ?",
                          (day, domain, rua)).fetchone() is not None
    finally:
        db.close()
