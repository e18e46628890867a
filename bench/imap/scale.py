"""IMAP at real mailbox size: the box's access service beside a private Dovecot, in the same run.

    .venv/bin/python -m bench.imap.scale [--messages 100000] [--idle-sessions 200] [--idle-seconds 60]
    make bench-imap BENCH_IMAP_ARGS="--messages 2000"      # smoke run
    .venv/bin/python -m bench.imap.scale --prepare DIR      # write the mailboxes ahead of a quiet window,
    .venv/bin/python -m bench.imap.scale --prebuilt DIR     # then measure with them (same options)

Both servers get an INBOX of --messages messages of about 3 KB, a third \\Seen, written
straight into Maildir (bench/imap/corpus.py: the same bytes and file names for both, UIDs in
the same order). Then, with one client implementation (Python imaplib over STARTTLS, the same
certificate), each server in turn is measured:

- the first LOGIN and the first SELECT ever, and their sum as "index build" (a server may build
  its index when the store opens at LOGIN, or at the first SELECT);
- SELECT warm (a new session, median of 3);
- FETCH 1:* (UID FLAGS); UID SEARCH UNSEEN; a 20-message page FETCH n-19:n (UID ENVELOPE FLAGS)
  (first and again);
- STORE +FLAGS ($Label1) on 1,000 messages; COPY of 500 to another folder;
- NOOP right after one new delivery (a file written into new/ as the relay does), until the
  EXISTS is seen;
- CPU of --idle-sessions sessions sitting in IDLE for --idle-seconds (utime+stime delta of the
  server's processes from /proc/PID/stat), spread over --idle-users users (at most 10 sessions
  of one user from one address, the per-user cap of both servers) each from its own loopback
  address; every one of these users has the same --messages INBOX (hard links);
- RSS with those sessions open (the access process and its children; Dovecot's imap processes).

UID SEARCH UNSEEN is checked for its count and, at the end (untimed), for being the same
messages on both servers: their Message-IDs are compared (the UIDs may differ: each server
numbers files it did not write in its own order).

Timed rows are the median of --rounds unless named otherwise. The table has Dovecot, the box
and box/Dovecot (above 1 means the box is slower or bigger). The 1-min load average is printed
at the start; above 1 the figures are marked not reportable (a shared machine distorts them).
Results also go to bench/imap/last_scale_run.json. Every wait is bounded (--op-timeout per
IMAP command, --build-timeout for writing the mailboxes). A wrong answer (an EXISTS, FETCH or
SEARCH count that does not match the mailbox) or a session that failed is printed as PROBLEM:
the exit status is 0 only for a valid run on a quiet machine.
"""

from __future__ import annotations

import argparse
import imaplib
import json
import math
import os
import re
import shutil
import socket
import sqlite3
import statistics
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w

from bench.imap import corpus, procstat
from tests.access.dovecot import Dovecot, start_dovecot
from tests.helpers.box import Box, make_box

PASSWORD = "correct horse battery"
DOMAIN = "example.test"
USER = f"bench@{DOMAIN}"
NOBODY = 65534
PER_USER = 10  # Dovecot's mail_max_userip_connections default and the box's imap_connections_per_user_ip
# Dovecot as an ISP would run it for hundreds of sessions: login processes in high-performance
# mode (one process serves many TLS connections) instead of one process per connection.
DOVECOT_SCALE_CONF = """
service imap-login {
  service_count = 0
  process_min_avail = 2
  client_limit = 1000
}
service imap {
  process_limit = 2048
}
default_client_limit = 4000
"""


class Client(imaplib.IMAP4):
    """imaplib over a socket bound to SOURCE (a loopback address of its own per simulated customer)."""

    def __init__(self, host: str, port: int, source: str, timeout: float) -> None:
        self._source = source
        super().__init__(host, port, timeout=timeout)

    def _create_socket(self, timeout: float | None) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout, source_address=(self._source, 0))


@dataclass
class Target:
    name: str
    host: str
    port: int
    inbox: Callable[[str], Path]  # login -> INBOX Maildir
    owner: int | None
    pids: Callable[[], list[int]]  # every process whose CPU counts
    rss_pids: Callable[[], list[int]]  # the processes whose RSS is reported
    login_pids: Callable[[], list[int]] | None = None  # Dovecot's imap-login: reported as a note
    results: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # wrong answers, failed sessions: the run is not valid
    unseen: list[int] | None = None  # the UIDs UID SEARCH UNSEEN answered
    unseen_ids: set[bytes] | None = None  # their Message-IDs: both servers must name the same messages


def connect(t: Target, box: Box, user: str, timeout: float, source: str = "127.0.0.1") -> Client:
    m = Client(t.host, t.port, source, timeout)
    m.starttls(ssl_context=box.client_tls())
    m.login(user, PASSWORD)
    return m


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def check(t: Target, what: str, ok: bool, detail: str) -> None:
    if not ok:
        t.problems.append(f"{t.name}: WRONG ANSWER in {what}: {detail}")


def ok(resp: tuple[str, list[object]], what: str) -> list[object]:
    typ, data = resp
    if typ != "OK":
        raise RuntimeError(f"{what}: {typ} {data!r}")
    return data


def measure_operations(t: Target, box: Box, n: int, rounds: int, timeout: float) -> None:
    r = t.results
    r["first LOGIN (connect, STARTTLS, LOGIN)"], m = timed(lambda: connect(t, box, USER, timeout))
    assert isinstance(m, Client)
    r["SELECT cold (first ever)"], data = timed(lambda: ok(m.select("INBOX"), "SELECT"))
    check(t, "SELECT cold", data == [str(n).encode()], f"EXISTS {data!r}, expected {n}")
    # A server may build its index when the store opens (at LOGIN) or at the first SELECT: the sum is
    # what the customer waits for the first time.
    r["index build (first LOGIN + first SELECT)"] = r["first LOGIN (connect, STARTTLS, LOGIN)"] + \
        r["SELECT cold (first ever)"]
    # Right after the index build, what a client does next: a flag resync, then sizes. Both servers
    # may defer work past the first SELECT (Dovecot computes sizes on demand; the box fills sizes,
    # dates and file names in the background, appliance/mailstore/fill.py): these rows show where it went.
    r["FETCH 1:* (UID FLAGS), right after the index build"], data = timed(
        lambda: ok(m.fetch("1:*", "(UID FLAGS)"), "FETCH"))
    check(t, "first FETCH 1:*", isinstance(data, list) and len(data) == n, f"{len(data)} items")  # type: ignore[arg-type]
    r["FETCH 1:* (RFC822.SIZE), first"], data = timed(lambda: ok(m.fetch("1:*", "(RFC822.SIZE)"), "FETCH"))
    check(t, "first FETCH RFC822.SIZE", isinstance(data, list) and len(data) == n, f"{len(data)} items")  # type: ignore[arg-type]

    warm = []
    for _ in range(rounds):
        w = connect(t, box, USER, timeout)
        sec, data = timed(lambda w=w: ok(w.select("INBOX"), "SELECT"))
        warm.append(sec)
        w.logout()
    r["SELECT warm (new session)"] = statistics.median(warm)

    def median_of(fn: Callable[[], object]) -> tuple[float, object]:
        runs = [timed(fn) for _ in range(rounds)]
        return statistics.median(s for s, _ in runs), runs[-1][1]

    r["FETCH 1:* (UID FLAGS)"], data = median_of(lambda: ok(m.fetch("1:*", "(UID FLAGS)"), "FETCH"))
    check(t, "FETCH 1:*", isinstance(data, list) and len(data) == n, f"{len(data)} items")  # type: ignore[arg-type]
    r["UID SEARCH UNSEEN"], data = median_of(lambda: ok(m.uid("SEARCH", "UNSEEN"), "SEARCH"))
    unseen = sum(1 for i in range(n) if not corpus.seen(i))
    found = len(data[0].split()) if isinstance(data, list) and data and data[0] else 0  # type: ignore[union-attr]
    check(t, "UID SEARCH UNSEEN", found == unseen, f"{found} UIDs, expected {unseen}")
    t.unseen = [int(u) for u in data[0].split()] if found else []  # type: ignore[union-attr]

    page = f"{max(1, n - 19)}:{n}"
    r["ENVELOPE page of 20 (first)"], data = timed(lambda: ok(m.fetch(page, "(UID ENVELOPE FLAGS)"), "FETCH"))
    check(t, "ENVELOPE page", len(data) == min(n, 20), f"{len(data)} items")  # type: ignore[arg-type]
    r["ENVELOPE page of 20 (again)"], _ = median_of(lambda: ok(m.fetch(page, "(UID ENVELOPE FLAGS)"), "FETCH"))

    k = min(1000, n)
    start = max(1, n // 2 - k // 2)
    store = []
    for _ in range(rounds):
        sec, data = timed(lambda: ok(m.store(f"{start}:{start + k - 1}", "+FLAGS", "($Label1)"), "STORE"))
        store.append(sec)
        check(t, "STORE", len(data) == k, f"{len(data)} FETCH responses, expected {k}")  # type: ignore[arg-type]
        ok(m.store(f"{start}:{start + k - 1}", "-FLAGS.SILENT", "($Label1)"), "STORE reset")  # untimed
    r[f"STORE +FLAGS ($Label1) on {k:,}"] = statistics.median(store)

    ok(m.create("Copies"), "CREATE")
    c = min(500, n)
    copy = []
    for i in range(rounds):
        lo = 1 + (i * c) % max(1, n - c + 1)
        sec, _ = timed(lambda lo=lo: ok(m.copy(f"{lo}:{lo + c - 1}", "Copies"), "COPY"))
        copy.append(sec)
    r[f"COPY of {c}"] = statistics.median(copy)
    status = ok(m.status("Copies", "(MESSAGES)"), "STATUS")
    check(t, "COPY", f"MESSAGES {rounds * c}".encode() in status[0], f"{status!r}")  # type: ignore[operator]

    noop, extra = [], 0
    for i in range(rounds):
        m.untagged_responses.clear()
        corpus.deliver(t.inbox(USER), corpus.message(n + i), t.owner)
        start_t = time.perf_counter()
        tries = 0
        while tries < 50:  # bounded: 50 NOOPs or 10 s
            tries += 1
            ok(m.noop(), "NOOP")
            exists = m.untagged_responses.get("EXISTS", [])
            if exists and int(exists[-1]) == n + i + 1:
                break
            if time.perf_counter() - start_t > 10:
                break
            time.sleep(0.01)
        noop.append(time.perf_counter() - start_t)
        extra = max(extra, tries - 1)
        check(t, "NOOP after delivery", bool(exists) and int(exists[-1]) == n + i + 1, f"EXISTS {exists!r}")
    r["NOOP after one delivery (until EXISTS)"] = statistics.median(noop)
    if extra:
        t.notes.append(f"{t.name}: the new message needed up to {extra + 1} NOOPs to show up")
    m.logout()


def message_ids(m: Client, uids: set[int]) -> set[bytes]:
    """The Message-IDs of UIDS in the selected mailbox."""
    data = ok(m.uid("FETCH", "1:*", "(UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])"), "FETCH Message-ID")
    out = set()
    for item in data:
        if isinstance(item, tuple):
            found = re.search(rb"UID (\d+)", item[0])
            if found and int(found.group(1)) in uids:
                out.add(item[1].split(b":", 1)[1].strip())
    return out


@dataclass
class IdleSession:
    client: Client
    tag: bytes


def open_idle(t: Target, box: Box, user: str, source: str, timeout: float) -> IdleSession:
    m = connect(t, box, user, timeout, source)
    ok(m.select("INBOX"), "SELECT")
    tag = m._new_tag()  # imaplib before Python 3.14 has no idle(): send it by hand
    m.send(tag + b" IDLE\r\n")
    line = m.readline()
    if not line.startswith(b"+"):
        raise RuntimeError(f"IDLE refused: {line!r}")
    return IdleSession(m, tag)


def close_idle(s: IdleSession) -> bool:
    try:
        s.client.send(b"DONE\r\n")
        s.client._get_tagged_response(s.tag)  # reads to the tagged reply, within the socket timeout
        s.client.logout()
        return True
    except (OSError, imaplib.IMAP4.error):
        return False


def measure_idle(t: Target, box: Box, users: list[str], sessions: int, seconds: float, timeout: float) -> None:
    per_user = math.ceil(sessions / len(users))
    plan = [(users[i % len(users)], f"127.0.1.{1 + i % len(users)}") for i in range(sessions)]
    opened: list[IdleSession] = []
    failures: list[str] = []

    def one(job: tuple[str, str]) -> None:
        try:
            opened.append(open_idle(t, box, job[0], job[1], timeout))
        except (OSError, RuntimeError, imaplib.IMAP4.error) as exc:
            failures.append(f"{job[0]} from {job[1]}: {exc}")

    # The first session of each user builds that user's index; then the rest, in parallel.
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, plan[: len(users)]))
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, plan[len(users) :]))
    if failures:
        t.problems.append(f"{t.name}: {len(failures)} of {sessions} IDLE sessions failed to open, e.g. {failures[0]}")
    # Let logins and index work settle before the quiet window: until the server's processes use
    # under 1 % of a core over 2 s (bounded: 300 s). The box fills the imported INBOXes' sizes and
    # names in the background (appliance/mailstore/fill.py); that is not idle cost, but how long it
    # took is reported.
    pids = t.pids()
    settle_start = time.monotonic()
    time.sleep(5)
    while time.monotonic() - settle_start < 300:
        before = procstat.cpu_seconds(pids)
        time.sleep(2)
        if procstat.cpu_seconds(pids) - before < 0.02:
            break
    t.notes.append(f"{t.name}: busy for {time.monotonic() - settle_start:.0f} s after the IDLE sessions opened "
                   f"(index work finishing) before the quiet window")
    before = procstat.cpu_seconds(pids)
    time.sleep(seconds)
    used = procstat.cpu_seconds(pids) - before
    t.results[f"CPU of {len(opened)} IDLE sessions ({per_user}/user), % of a core"] = 100 * used / seconds
    t.results[f"RSS with {len(opened)} IDLE sessions, MB"] = procstat.rss_bytes(t.rss_pids()) / 1e6
    t.notes.append(f"{t.name}: PSS (shared pages split among processes) of the same processes: "
                   f"{procstat.pss_bytes(t.rss_pids()) / 1e6:.0f} MB")
    if t.login_pids is not None:
        t.notes.append(f"{t.name}: its login processes (which hold the TLS connections) add "
                       f"{procstat.rss_bytes(t.login_pids()) / 1e6:.0f} MB RSS")
    with ThreadPoolExecutor(8) as pool:
        closed = sum(pool.map(close_idle, opened))
    if closed != len(opened):
        t.problems.append(f"{t.name}: {len(opened) - closed} IDLE sessions did not end cleanly with DONE")


def access_pid(box: Box) -> int:
    for s in box.status()["services"]:
        if s["name"] == "access" and s["pid"]:
            return int(s["pid"])
    raise RuntimeError("the access service is not running")


def _fmt(key: str, v: float | None) -> str:
    if v is None:
        return "—"
    if "%" in key:
        return f"{v:.2f} %"
    if "MB" in key:
        return f"{v:.0f} MB"
    return f"{v * 1000:.1f} ms" if v < 1 else f"{v:.2f} s"


def table(dv: Target, bx: Target) -> str:
    lines = ["| operation | Dovecot | box | box / Dovecot |", "| --- | ---: | ---: | ---: |"]
    for key in dict.fromkeys([*dv.results, *bx.results]):
        a, b = dv.results.get(key), bx.results.get(key)
        ratio = f"{b / a:.2f}×" if a and b is not None else "—"
        lines.append(f"| {key} | {_fmt(key, a)} | {_fmt(key, b)} | {ratio} |")
    return "\n".join(lines)


def _tune(box: Box) -> None:
    data = tomllib.loads(box.config_file.read_text())
    limits = data.setdefault("limits", {})
    limits["auth_failures_per_ip"] = 1000
    limits["abuse_brake"] = {"enabled": False}
    box.config_file.write_text(tomli_w.dumps(data))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=100_000, help="INBOX size (2000 for a smoke run)")
    ap.add_argument("--idle-sessions", type=int, default=200)
    ap.add_argument("--idle-users", type=int, default=20)
    ap.add_argument("--idle-seconds", type=float, default=60)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--op-timeout", type=float, default=900, help="seconds any one IMAP command may take")
    ap.add_argument("--build-timeout", type=float, default=1800, help="seconds for writing the mailboxes")
    ap.add_argument("--only", choices=("box", "dovecot"), help="measure one server only")
    ap.add_argument("--no-message-check", action="store_true",
                    help="skip the untimed Message-ID comparison of UID SEARCH UNSEEN (a minute at 100,000)")
    ap.add_argument("--prepare", type=Path, metavar="DIR",
                    help="only write the mailboxes into DIR (before a quiet window) for one later --prebuilt run")
    ap.add_argument("--prebuilt", type=Path, metavar="DIR",
                    help="move in the mailboxes --prepare wrote to DIR (same options; DIR is used up)")
    args = ap.parse_args()
    if args.messages < 20 or args.idle_users < 1 or args.idle_sessions < 0:
        ap.error("--messages must be at least 20, --idle-users at least 1")
    if math.ceil(args.idle_sessions / args.idle_users) > PER_USER:
        ap.error(f"more than {PER_USER} sessions per user would hit the per-user cap: raise --idle-users")
    if args.idle_users > 250:
        ap.error("--idle-users: at most 250 (one loopback address each, 127.0.1.1-250)")
    imaplib._MAXLINE = 50_000_000  # a SEARCH of 100,000 UIDs is one long line
    idle_users = [f"idle{i:02d}@{DOMAIN}" for i in range(1, args.idle_users + 1)] if args.idle_sessions else []
    spec = {"messages": args.messages, "users": [USER, *idle_users]}
    if args.prepare is not None:
        sec, _ = timed(lambda: prepare(args.prepare, spec, args.only))
        print(f"mailboxes written into {args.prepare} in {sec:.1f} s", flush=True)
        return 0
    if args.prebuilt is not None:
        have = json.loads((args.prebuilt / "spec.json").read_text())
        if have != spec:
            ap.error(f"--prebuilt {args.prebuilt} holds {have}, not {spec}: run --prepare with the same options")

    load = procstat.load_average()
    started = time.monotonic()
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-imap-scale-"))
    box = make_box(tmp)
    _tune(box)
    for address in [USER, *idle_users]:
        box.add_user(address.split("@")[0], PASSWORD)
    # Dovecot verifies the very hash the appliance stores: logins compare servers, not schemes.
    with sqlite3.connect(box.cfg.paths.accounts_db) as db:
        hashes = {a: "{ARGON2ID}" + h for a, h in db.execute("SELECT address, password FROM accounts")}
    dv = start_dovecot({a: PASSWORD for a in hashes}, box.cfg.tls.cert, box.cfg.tls.key, hashes,
                       extra_conf=DOVECOT_SCALE_CONF)
    dovecot = Target("Dovecot", "127.0.0.1", dv.imap_port, dv.maildir, NOBODY, lambda: procstat.tree(dv.proc.pid),
                     lambda: _named(dv, "imap"), lambda: _named(dv, "imap-login"))
    deadline = time.monotonic() + args.build_timeout
    try:
        if args.prebuilt is not None:
            sec, _ = timed(lambda: _move_in(args.prebuilt, dv, box, [USER, *idle_users], args.only))
            print(f"prebuilt mailboxes moved in from {args.prebuilt} in {sec:.1f} s", flush=True)
        else:
            sec, _ = timed(lambda: _build(dv, box, idle_users, args.messages, deadline, args.only))
            print(f"mailboxes written in {sec:.1f} s", flush=True)
        box.up()
        pid = access_pid(box)
        boxt = Target("box", box.host("imap"), box.port("imap"), box.maildir, None, lambda: procstat.tree(pid),
                      lambda: procstat.tree(pid))
        targets = [t for t in (dovecot, boxt) if args.only in (None, t.name.lower())]
        for t in targets:
            sec, _ = timed(lambda t=t: measure_operations(t, box, args.messages, args.rounds, args.op_timeout))
            print(f"{t.name}: operations measured in {sec:.1f} s", flush=True)
            if args.idle_sessions:
                sec, _ = timed(lambda t=t: measure_idle(t, box, idle_users, args.idle_sessions, args.idle_seconds,
                                                        args.op_timeout))
                print(f"{t.name}: IDLE measured in {sec:.1f} s", flush=True)
        for t in targets:
            # Untimed, after the RSS row: it reads every message's header.
            if t.unseen is not None and not args.no_message_check:
                m = connect(t, box, USER, args.op_timeout)
                ok(m.select("INBOX"), "SELECT")
                t.unseen_ids = message_ids(m, set(t.unseen))
                m.logout()
    finally:
        dv.stop()
        box.down()
        shutil.rmtree(tmp, ignore_errors=True)
    if dovecot.unseen_ids is not None and boxt.unseen_ids is not None:
        # The same messages (by Message-ID), not just as many. The UIDs themselves may differ: each
        # server numbers the files of a Maildir it did not write in its own order.
        same_uids = "the same UIDs" if dovecot.unseen == boxt.unseen else "in each server's own UIDs"
        if dovecot.unseen_ids == boxt.unseen_ids:
            boxt.notes.append(f"UID SEARCH UNSEEN: both servers answered the same {len(boxt.unseen_ids):,} "
                              f"messages (Message-IDs compared; {same_uids})")
        else:
            diff = sorted(dovecot.unseen_ids ^ boxt.unseen_ids)
            boxt.problems.append(f"UID SEARCH UNSEEN: the servers' answers differ in {len(diff)} messages, "
                                 f"e.g. {diff[:3]}")
    end_load = procstat.load_average()
    print(f"\n{args.messages:,} messages; load average at start {load[0]:.2f}, at the end {end_load[0]:.2f}; "
          f"whole run {time.monotonic() - started:.0f} s")
    if load[0] > 1:
        print(f"WARNING: the 1-min load average was {load[0]:.2f} > 1 at the start: these figures are NOT "
              "reportable (run again on a quiet machine)")
    elif end_load[0] > 1:
        print(f"WARNING: the 1-min load average rose to {end_load[0]:.2f} during the run: compare with a "
              "second run before reporting")
    print(table(dovecot, boxt))
    for note in dovecot.notes + boxt.notes:
        print(f"- {note}")
    for problem in dovecot.problems + boxt.problems:
        print(f"PROBLEM: {problem}")
    out = Path(__file__).with_name("last_scale_run.json")
    out.write_text(json.dumps({"messages": args.messages, "load_at_start": load, "load_at_end": end_load,
                               "reportable": load[0] <= 1, "dovecot": dovecot.results, "box": boxt.results,
                               "notes": dovecot.notes + boxt.notes, "problems": dovecot.problems + boxt.problems,
                               "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=2) + "\n")
    return 0 if load[0] <= 1 and not (dovecot.problems or boxt.problems) else 1


def _named(dv: Dovecot, comm: str) -> list[int]:
    return [p for p in procstat.tree(dv.proc.pid) if procstat.comm(p) == comm]


def _build(dv: Dovecot, box: Box, idle_users: list[str], n: int, deadline: float, only: str | None) -> None:
    for owner, inbox, who in ((NOBODY, dv.maildir, "dovecot"), (None, box.maildir, "box")):
        if only not in (None, who):
            continue
        files = corpus.build(inbox(USER), n, owner, deadline)
        for user in idle_users:
            corpus.link_copy(files, inbox(user), owner)
            if time.monotonic() > deadline:
                raise TimeoutError("writing the mailboxes took longer than --build-timeout")


def prepare(out: Path, spec: dict, only: str | None) -> None:
    """Every user's INBOX for both servers under OUT/<server>/<login>/ (what _build writes in a run)."""
    out.mkdir(parents=True, exist_ok=False)
    for owner, who in ((NOBODY, "dovecot"), (None, "box")):
        if only not in (None, who):
            continue
        first, *rest = spec["users"]
        files = corpus.build(out / who / first, spec["messages"], owner)
        for user in rest:
            corpus.link_copy(files, out / who / user, owner)
    (out / "spec.json").write_text(json.dumps(spec))


def _move_in(src: Path, dv: Dovecot, box: Box, users: list[str], only: str | None) -> None:
    """Rename --prepare's cur/ directories into the servers' empty INBOXes (one file system: instant)."""
    for owner, inbox, who in ((NOBODY, dv.maildir, "dovecot"), (None, box.maildir, "box")):
        if only not in (None, who):
            continue
        for user in users:
            corpus.maildir_dirs(inbox(user), owner)
            if any((inbox(user) / "cur").iterdir()):
                raise RuntimeError(f"{inbox(user)}/cur is not empty")
            os.rename(src / who / user / "cur", inbox(user) / "cur")
    shutil.rmtree(src)


if __name__ == "__main__":
    sys.exit(main())
