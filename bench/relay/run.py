"""Durable-accept benchmark: our relay vs two private Postfix instances, same run.

    sudo .venv/bin/python bench/relay/run.py [--quick] [--out results.json] [--rows 1:1,100:20] [--profile DIR]

For each message size (1 KB, 100 KB) and session count (1, 20, 100):
- throughput: smtp-source sends a bounded number of messages; msg/s = count / wall time
  (every 250 means the message is on disk: our spool fsyncs the message's file, whose name
  was made durable beforehand (docs/spool.md); Postfix fsyncs its queue file before 250);
- latency: a second, smaller pass with a Python client at the same session count, timing
  DATA's final "." to the 250 reply (p50/p99).
Our relay delivers what it accepts into a local Maildir (fsynced) while it accepts. Postfix is
measured twice: "postfix" hands each message to its discard transport (accept only), and
"postfix_maildir" delivers each one with virtual(8) into a Maildir under its own directory on the
same disk (like for like with the relay). After each pass the run counts the files in both
Maildirs and exits non-zero if one message is missing or extra. For the two that deliver it also
reports "delivered msg/s": the pass's count over the time until its last message is in the Maildir.
For the relay: CPU per message (deliveries included) and the share of a core used by its event
loop's thread and by its other threads (/proc/PID/task), to tell whether one core is saturated.
Prints Markdown tables for docs/benchmarks.md. Needs root (private Postfix) and the Debian postfix package.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

import tomli_w

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from appliance.accounts import AccountStore  # noqa: E402
from appliance.config import Config, load  # noqa: E402
from tests.helpers.postfix import PrivatePostfix  # noqa: E402
from tests.relay_back.relayproc import RelayProcess, raise_member_limits  # noqa: E402

SIZES = (1024, 100 * 1024)
SESSIONS = (1, 20, 100)
# Bounded counts: (size, sessions) -> messages for the throughput pass.
COUNTS = {(1024, 1): 1000, (1024, 20): 4000, (1024, 100): 4000,
          (102400, 1): 300, (102400, 20): 1000, (102400, 100): 1000}
LATENCY_COUNT = {1: 200, 20: 1000, 100: 1000}
WARMUP = 100  # messages to each server before the first row, not counted
SENDER = "bench@isp-bench.test"
# services.relay falls back to asyncio.run() when uvloop cannot be imported.
ASYNCIO_RELAY = ("import sys; sys.modules['uvloop'] = None; from services.relay.__main__ import main; "
                 "sys.exit(main(sys.argv[1:]))")
RCPT = "alice@example.test"


def setup_box(d: Path) -> Config:
    subprocess.run([sys.executable, "-m", "appliance", "init", "--dev", str(d), "--base-port", "0"],
                   check=True, capture_output=True)
    cf = d / "appliance.toml"
    data = tomllib.loads(cf.read_text())
    data.setdefault("limits", {}).update({"connections_per_ip": 1000, "connection_rate_per_ip": 1_000_000.0,
                                          "connection_burst_per_ip": 100_000})
    cf.write_text(tomli_w.dumps(data))
    cfg = load(cf)
    raise_member_limits(cfg)
    store = AccountStore(cfg.paths.accounts_db)
    store.add(RCPT, "correct horse battery")
    store.close()
    return cfg


def smtp_source(port: int, sessions: int, count: int, size: int, t0: float) -> float:
    """Send COUNT messages; the accept rate since T0 (time.monotonic())."""
    r = subprocess.run(["smtp-source", "-s", str(sessions), "-m", str(count), "-l", str(size), "-f", SENDER,
                        "-t", RCPT, f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=600)
    elapsed = time.monotonic() - t0
    if r.returncode != 0:
        raise RuntimeError(f"smtp-source failed: {r.stderr.strip()}")
    return count / elapsed


async def _latency_session(port: int, n: int, body: bytes, out: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def reply() -> bytes:
        while True:
            line = await reader.readline()
            if not line:
                raise ConnectionError("closed")
            if line[3:4] != b"-":
                return line

    await reply()
    writer.write(b"EHLO bench.test\r\n")
    await reply()
    for _ in range(n):
        writer.write(f"MAIL FROM:<{SENDER}>\r\n".encode())
        await reply()
        writer.write(f"RCPT TO:<{RCPT}>\r\n".encode())
        await reply()
        writer.write(b"DATA\r\n")
        await reply()
        writer.write(body)
        t0 = time.perf_counter()
        writer.write(b".\r\n")
        line = await reply()
        out.append(time.perf_counter() - t0)
        if not line.startswith(b"250"):
            raise RuntimeError(f"DATA answered {line!r}")
    writer.write(b"QUIT\r\n")
    await reply()
    writer.close()


def latency_messages(sessions: int, size: int) -> int:
    total = LATENCY_COUNT[sessions] if size == 1024 else max(100, LATENCY_COUNT[sessions] // 4)
    return max(1, total // sessions) * sessions


def latency(port: int, sessions: int, size: int) -> tuple[float, float]:
    per = latency_messages(sessions, size) // sessions
    line = b"x" * 78 + b"\r\n"
    body = (f"From: {SENDER}\r\nTo: {RCPT}\r\nSubject: bench\r\n\r\n".encode()
            + line * max(1, size // len(line)))
    out: list[float] = []

    async def main() -> None:
        await asyncio.gather(*(_latency_session(port, per, body, out) for _ in range(sessions)))

    asyncio.run(main())
    out.sort()
    return statistics.median(out) * 1000, out[min(len(out) - 1, int(len(out) * 0.99))] * 1000


def maildir_count(root: Path) -> int:
    """Messages delivered under ROOT: files in every new/ and cur/ below it (folders included).
    os.walk reads directory entries without a stat per file: this is polled while the servers run."""
    return sum(len(files) for d, _, files in os.walk(root) if os.path.basename(d) in ("new", "cur"))


def empty_maildir(root: Path) -> None:
    """Remove the delivered files (not the directories), so that each row starts from an empty Maildir."""
    for d, _, files in os.walk(root):
        if os.path.basename(d) in ("new", "cur"):
            for f in files:
                os.unlink(os.path.join(d, f))


def wait_delivered(root: Path, expected: int, timeout: float = 300) -> int:
    """Wait until EXPECTED messages are in the Maildir under ROOT (or TIMEOUT); return the count."""
    deadline = time.monotonic() + timeout
    while (n := maildir_count(root)) < expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return n


def wait_drained(queue: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while any(queue.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.2)


def postfix_drained(pf: PrivatePostfix, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    dirs = [pf.dir / "queue" / q for q in ("incoming", "active", "deferred", "maildrop")]
    while time.monotonic() < deadline:
        if not any(any(p.is_file() for p in d.rglob("*")) for d in dirs if d.exists()):
            return
        time.sleep(0.2)


def parse_rows(text: str) -> set[tuple[int, int]]:
    rows = set()
    for item in text.split(","):
        kb, _, sessions = item.partition(":")
        row = (int(kb) * 1024, int(sessions))
        if row not in COUNTS:
            raise argparse.ArgumentTypeError(f"no row {item!r}: sizes {[s // 1024 for s in SIZES]} KB, "
                                             f"sessions {list(SESSIONS)}")
        rows.add(row)
    return rows


def cpu_seconds(pid: int) -> float:
    """utime + stime of PID, all its threads (proc(5))."""
    return cpu_seconds_of(Path(f"/proc/{pid}/stat"))


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each thread of PID (TID -> utime + stime); the event loop is the main thread, TID = PID."""
    out = {}
    for t in Path(f"/proc/{pid}/task").iterdir():
        try:
            out[int(t.name)] = cpu_seconds_of(t / "stat")
        except (OSError, IndexError, ValueError):
            continue  # the thread ended meanwhile
    return out


def context_switches(pid: int) -> int:
    """Voluntary + involuntary context switches of every thread of PID: each thread hand-off costs some."""
    total = 0
    for t in Path(f"/proc/{pid}/task").iterdir():
        try:
            for line in (t / "status").read_text().splitlines():
                if "ctxt_switches:" in line:
                    total += int(line.split()[1])
        except (OSError, IndexError, ValueError):
            continue  # the thread ended meanwhile
    return total


def cpu_seconds_of(stat: Path) -> float:
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def profile(relay: RelayProcess, out: Path) -> list[subprocess.Popen[bytes]]:
    """py-spy on the relay until SIGINT, without pausing it: OUT-wall.txt has every thread, idle ones
    too (where it waits); OUT-gil.txt only the thread holding the GIL (where the CPU goes). Raw
    collapsed stacks, one line per stack with its sample count."""
    assert relay.proc is not None
    out.parent.mkdir(parents=True, exist_ok=True)
    spies = [subprocess.Popen([str(ROOT / ".venv/bin/py-spy"), "record", "--pid", str(relay.proc.pid), "--nonblocking",
                               "--format", "raw", "--threads", "--rate", "100", *flags, "--output", f"{out}-{kind}.txt"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for kind, flags in (("wall", ["--idle"]), ("gil", ["--gil"]))]
    time.sleep(1.0)  # py-spy attaches
    return spies


def _cell(row: dict[str, object], name: str) -> dict[str, float] | None:
    return row.get(name)  # type: ignore[return-value]


def markdown(results: list[dict[str, object]]) -> str:
    """The table for docs/benchmarks.md: the relay against both Postfix configurations."""
    lines = ["| size | sessions | messages | relay msg/s | Postfix discard msg/s | Postfix Maildir msg/s "
             "| relay / discard | relay / Maildir | relay p50 / p99 ms | discard p50 / p99 ms | Maildir p50 / p99 ms |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in results:
        r, p, m = _cell(row, "relay"), _cell(row, "postfix"), _cell(row, "postfix_maildir")

        def rate(c: dict[str, float] | None) -> str:
            return f"{c['msg_s']}" if c else "-"

        def lat(c: dict[str, float] | None) -> str:
            return f"{c['p50_ms']} / {c['p99_ms']}" if c else "-"

        def ratio(ours: dict[str, float] | None, other: dict[str, float] | None) -> str:
            return f"{ours['msg_s'] / other['msg_s']:.2f}x" if ours and other else "-"

        lines.append(f"| {int(row['size']) // 1024} KB | {row['sessions']} | {row['count']} | {rate(r)} | {rate(p)} "  # type: ignore[call-overload]
                     f"| {rate(m)} | {ratio(r, p)} | {ratio(r, m)} | {lat(r)} | {lat(p)} | {lat(m)} |")
    lines += ["", "Accepted and delivered (from the first connection until the pass's last message is in the Maildir):",
              "", "| size | sessions | relay delivered msg/s | Postfix Maildir delivered msg/s | relay / Maildir |",
              "| --- | ---: | ---: | ---: | ---: |"]
    for row in results:
        r, m = _cell(row, "relay"), _cell(row, "postfix_maildir")
        rd, md = (r or {}).get("delivered_msg_s"), (m or {}).get("delivered_msg_s")
        ratio = f"{rd / md:.2f}x" if rd and md else "-"
        lines.append(f"| {int(row['size']) // 1024} KB | {row['sessions']} | {rd or '-'} | {md or '-'} | {ratio} |")  # type: ignore[call-overload]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="a tenth of the counts (smoke run)")
    ap.add_argument("--only", type=lambda v: set(v.split(",")), metavar="NAMES",
                    help="benchmark only these, comma-separated: relay, postfix (discard), postfix_maildir")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    ap.add_argument("--rows", type=parse_rows, help="only these KB:SESSIONS rows, e.g. 1:1,1:100,100:20")
    ap.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop",
                    help="the relay's event loop (asyncio: uvloop hidden from it, to measure what uvloop gives)")
    ap.add_argument("--profile", type=Path, metavar="DIR",
                    help="py-spy the relay during each throughput pass (raw stacks, GIL and idle) into DIR")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/relay: needs root (private Postfix instance)", file=sys.stderr)
        return 2
    started, load_start = time.monotonic(), os.getloadavg()
    print(f"load average at the start: {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}"
          + ("" if load_start[0] < 1 else "  (above 1: figures not reportable)"), flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench-relay-"))
    cfg = setup_box(work / "box")
    relay = RelayProcess(Path(cfg.source), work / "relay.log")
    if args.loop == "asyncio":
        relay.python_args = ("-c", ASYNCIO_RELAY)
    pf = PrivatePostfix.create("bench", {"default_transport": "discard", "local_transport": "discard",
                                         "relay_transport": "discard", "smtpd_tls_security_level": "none"})
    # Like for like: virtual(8) writes each message into vmail/Maildir/new (one Maildir for every
    # recipient: virtual_mailbox_maps = static:Maildir/), fsyncing the file before the rename.
    pfm = PrivatePostfix.create("bench-maildir", {"virtual_mailbox_domains": RCPT.split("@")[1],
                                                  "default_transport": "discard", "relay_transport": "discard",
                                                  "smtpd_tls_security_level": "none"})
    results: list[dict[str, object]] = []
    wrong: list[str] = []
    try:
        relay.start(cfg)
        pf.start()
        pfm.start()
        relay_maildir = Path(cfg.paths.mail_dir)
        # name -> (port, wait until its queue is empty, the Maildir it delivers into or None)
        targets: dict[str, tuple[int, Callable[[], None], Path | None]] = {
            "relay": (cfg.listeners.mx.port, lambda: wait_drained(Path(cfg.paths.spool_dir) / "queue"), relay_maildir),
            "postfix": (pf.port, lambda: postfix_drained(pf), None),
            "postfix_maildir": (pfm.port, lambda: postfix_drained(pfm), pfm.dir / "vmail" / "Maildir"),
        }
        # Warm-up, not counted: the first pass after start-up also paid for the start-up's own disk work
        # (the new box's files, the spool's pre-created files), and the relay's first pass came first.
        for name, (port, drain, maildir) in targets.items():
            if not args.only or name in args.only:
                smtp_source(port, 1, WARMUP, 1024, time.monotonic())
                drain()
                if maildir is not None:
                    wait_delivered(maildir, WARMUP)
                    empty_maildir(maildir)
        for size in SIZES:
            for sessions in SESSIONS:
                if args.rows and (size, sessions) not in args.rows:
                    continue
                count = COUNTS[(size, sessions)] // (10 if args.quick else 1)
                row: dict[str, object] = {"size": size, "sessions": sessions, "count": count}
                for name, (port, drain, maildir) in targets.items():
                    if args.only and name not in args.only:
                        continue
                    drain()
                    if maildir is not None:
                        empty_maildir(maildir)
                    spies = (profile(relay, args.profile / f"{size // 1024}k-{sessions}s")
                             if args.profile and name == "relay" else [])
                    cpu0 = cpu_seconds(relay.proc.pid) if name == "relay" and relay.proc else 0.0
                    threads0 = thread_cpu(relay.proc.pid) if name == "relay" and relay.proc else {}
                    switches0 = context_switches(relay.proc.pid) if name == "relay" and relay.proc else 0
                    t0 = time.monotonic()
                    rate = smtp_source(port, sessions, count, size, t0)
                    # Accepted and delivered: until the last of the pass's messages is in the Maildir.
                    e2e = count / (time.monotonic() - t0) if maildir is not None and wait_delivered(maildir, count) >= count \
                        else None
                    if name == "relay" and relay.proc:
                        # All of the pass's local deliveries included (measured once they are in the Maildir).
                        row["relay_cpu_ms_per_msg"] = round((cpu_seconds(relay.proc.pid) - cpu0) * 1000 / count, 3)
                        # Is one core saturated? The event loop's thread against the rest, % of one core.
                        wall = time.monotonic() - t0
                        threads = thread_cpu(relay.proc.pid)
                        loop_s = threads.get(relay.proc.pid, 0.0) - threads0.get(relay.proc.pid, 0.0)
                        rest_s = sum(v - threads0.get(k, 0.0) for k, v in threads.items() if k != relay.proc.pid)
                        row["relay_loop_core_pct"] = round(100 * loop_s / wall, 1)
                        row["relay_threads_core_pct"] = round(100 * rest_s / wall, 1)
                        row["relay_ctxsw_per_msg"] = round((context_switches(relay.proc.pid) - switches0) / count, 1)
                    for spy in spies:
                        spy.send_signal(signal.SIGINT)
                        spy.wait(60)
                    drain()
                    p50, p99 = latency(port, sessions, size)
                    drain()
                    row[name] = {"msg_s": round(rate, 1), "p50_ms": round(p50, 2), "p99_ms": round(p99, 2)}
                    note = (f" cpu {row['relay_cpu_ms_per_msg']} ms/msg, {row['relay_ctxsw_per_msg']} context switches/msg,"
                            f" loop thread {row['relay_loop_core_pct']} % + other threads {row['relay_threads_core_pct']} %"
                            " of a core") if name == "relay" else ""
                    if e2e is not None:
                        row[name]["delivered_msg_s"] = round(e2e, 1)  # type: ignore[index]
                        note += f" delivered {e2e:.1f} msg/s"
                    if maildir is not None:
                        # Every 250 must be a message in the Maildir (both passes), no more, no fewer.
                        sent = count + latency_messages(sessions, size)
                        got = wait_delivered(maildir, sent)
                        row[name]["delivered"] = got  # type: ignore[index]
                        note += f" (count {got}/{sent})"
                        if got != sent:
                            wrong.append(f"{name} {size // 1024} KB / {sessions}: {got} of {sent} in {maildir}")
                    print(f"{name:15} {size // 1024:>4} KB {sessions:>4} sessions: {rate:8.1f} msg/s "
                          f"p50 {p50:7.2f} ms p99 {p99:7.2f} ms{note}", flush=True)
                results.append(row)
    finally:
        relay.stop()
        pf.remove()
        pfm.remove()
        shutil.rmtree(work, ignore_errors=True)
    load_end = os.getloadavg()
    elapsed = time.monotonic() - started
    print(f"\nmachine: {os.cpu_count()} cores; load average {load_start[0]:.2f} at the start, {load_end[0]:.2f} "
          f"at the end; {elapsed:.0f} s; relay event loop: {args.loop}\n")
    print(markdown(results))
    if args.out:
        args.out.write_text(json.dumps({"cores": os.cpu_count(), "load_start": load_start[0], "load_end": load_end[0],
                                        "seconds": round(elapsed), "loop": args.loop, "results": results}, indent=2))
    for w in wrong:
        print(f"WRONG: {w}", file=sys.stderr)
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
