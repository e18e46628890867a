"""IMAP speed of the access service side by side with Dovecot, in the same run.

    .venv/bin/python -m bench.imap.run [--messages 500] [--logins 20] [--profile OUT.svg]

Starts a development box (relay + access under supervisor) and a private
Dovecot on loopback (tests/access/dovecot.py), both with STARTTLS and the same
certificate, then measures with the same imaplib client:

- login latency: connect, STARTTLS, LOGIN, LOGOUT; median of --logins rounds;
- APPEND throughput: --messages messages of about 2 KB over one session, and the
  same number over four concurrent sessions;
- FETCH throughput: FETCH 1:* (BODY.PEEK[]) and FETCH 1:* (UID FLAGS ENVELOPE).

Prints a table with the ratio (access / Dovecot, higher is better for
throughput) and writes it as JSON next to this file. With --profile, py-spy
records the access process during the run (where the time goes).
"""

from __future__ import annotations

import argparse
import imaplib
import json
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import tomli_w

from tests.access.dovecot import start_dovecot
from tests.helpers.box import Box, make_box

PASSWORD = "correct horse battery"
USER = "bench@example.test"


def _message(i: int) -> bytes:
    body = ("The quick brown fox jumps over the lazy dog. " * 40 + "\r\n") * 1
    return (f"From: bench@example.test\r\nTo: someone@example.test\r\nSubject: bench message {i}\r\n"
            f"Message-ID: <bench.{i}@example.test>\r\nDate: Mon, 30 Nov 2026 12:00:00 +0000\r\n\r\n{body}").encode()


def _client(host: str, port: int, box: Box) -> imaplib.IMAP4:
    m = imaplib.IMAP4(host, port)
    m.starttls(ssl_context=box.client_tls())
    m.login(USER, PASSWORD)
    return m


def _timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def measure(name: str, host: str, port: int, box: Box, messages: int, logins: int) -> dict[str, float]:
    lat = []
    for _ in range(logins):
        t = time.perf_counter()
        m = _client(host, port, box)
        m.logout()
        lat.append(time.perf_counter() - t)
    m = _client(host, port, box)
    m.create("Bench")
    msgs = [_message(i) for i in range(messages)]
    append_s = _timed(lambda: [m.append("Bench", None, None, x) for x in msgs])
    # Four sessions appending at once (into separate folders), the same total count.
    def one(k: int) -> None:
        c = _client(host, port, box)
        c.create(f"Par{k}")
        for x in msgs[k::4]:
            c.append(f"Par{k}", None, None, x)
        c.logout()

    with ThreadPoolExecutor(4) as pool:
        par_s = _timed(lambda: list(pool.map(one, range(4))))
    m.select("Bench")
    fetch_body_s = min(_timed(lambda: m.fetch("1:*", "(BODY.PEEK[])")) for _ in range(5))
    fetch_meta_s = min(_timed(lambda: m.fetch("1:*", "(UID FLAGS ENVELOPE)")) for _ in range(5))
    m.logout()
    result = {
        "login_ms_median": statistics.median(lat) * 1000,
        "append_msgs_per_s": messages / append_s,
        "append_4_sessions_msgs_per_s": messages / par_s,
        "fetch_body_msgs_per_s": messages / fetch_body_s,
        "fetch_envelope_msgs_per_s": messages / fetch_meta_s,
    }
    print(f"{name}: " + ", ".join(f"{k}={v:.1f}" for k, v in result.items()), flush=True)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=1000)
    ap.add_argument("--logins", type=int, default=20)
    ap.add_argument("--profile", help="py-spy profile of the access process: flame graph (.svg) or collapsed stacks (.txt)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-imap-"))
    box = make_box(tmp)
    data = tomllib.loads(box.config_file.read_text())
    data.setdefault("limits", {})["auth_failures_per_ip"] = 1000
    box.config_file.write_text(tomli_w.dumps(data))
    box.add_user("bench", PASSWORD)
    box.up()
    # Dovecot verifies the very same argon2id hash the appliance stores (same cost), so the
    # login comparison is of the servers, not of the password schemes.
    with sqlite3.connect(box.cfg.paths.accounts_db) as db:
        (stored,) = db.execute("SELECT password FROM accounts WHERE address = ?", (USER,)).fetchone()
    dv = start_dovecot({USER: PASSWORD}, box.cfg.tls.cert, box.cfg.tls.key, {USER: "{ARGON2ID}" + stored})
    spy = None
    try:
        time.sleep(1)
        if args.profile:
            pid = next(s["pid"] for s in box.status()["services"] if s["name"] == "access")
            fmt = ["-f", "raw"] if args.profile.endswith(".txt") else []  # .txt: collapsed stacks
            spy = subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record", "-p", str(pid), "-o", args.profile, "-r", "200", *fmt],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
            time.sleep(1)
        ours = measure("access", box.host("imap"), box.port("imap"), box, args.messages, args.logins)
        if spy is not None:
            spy.send_signal(2)
            spy.wait(60)
        theirs = measure("dovecot", "127.0.0.1", dv.imap_port, box, args.messages, args.logins)
    finally:
        dv.stop()
        box.down()
        shutil.rmtree(tmp, ignore_errors=True)
    ratios = {k: (ours[k] / theirs[k] if "per_s" in k else theirs[k] / ours[k]) for k in ours}
    print("\n| metric | access | Dovecot | ratio (access vs Dovecot, >1 is faster) |\n| --- | --- | --- | --- |")
    for k in ours:
        print(f"| {k} | {ours[k]:.1f} | {theirs[k]:.1f} | {ratios[k]:.2f}x |")
    out = Path(__file__).with_name("last_run.json")
    out.write_text(json.dumps({"access": ours, "dovecot": theirs, "ratio": ratios, "messages": args.messages,
                               "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
