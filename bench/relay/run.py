"""Durable-accept benchmark: our relay vs a private Postfix (queue + discard transport), same run.

    sudo .venv/bin/python bench/relay/run.py [--quick] [--out results.json]

For each message size (1 KB, 100 KB) and session count (1, 20, 100):
- throughput: smtp-source sends a bounded number of messages; msg/s = count / wall time
  (every 250 means the message is on disk: our spool fsyncs the message's file, whose name
  was made durable beforehand (docs/spool.md); Postfix fsyncs its queue file before 250);
- latency: a second, smaller pass with a Python client at the same session count, timing
  DATA's final "." to the 250 reply (p50/p99).
Our relay delivers what it accepts into a local Maildir (fsynced) while it accepts;
Postfix hands each message to its discard transport. Prints a Markdown table for
docs/benchmarks.md. Needs root (private Postfix) and the Debian postfix package.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import tomli_w

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from appliance.accounts import AccountStore  # noqa: E402
from appliance.config import Config, load  # noqa: E402
from tests.helpers.box import wait_port  # noqa: E402
from tests.relay_back.postfix import PrivatePostfix  # noqa: E402
from tests.relay_back.relayproc import RelayProcess, raise_member_limits  # noqa: E402

SIZES = (1024, 100 * 1024)
SESSIONS = (1, 20, 100)
# Bounded counts: (size, sessions) -> messages for the throughput pass.
COUNTS = {(1024, 1): 1000, (1024, 20): 4000, (1024, 100): 4000,
          (102400, 1): 300, (102400, 20): 1000, (102400, 100): 1000}
LATENCY_COUNT = {1: 200, 20: 1000, 100: 1000}
SENDER = "bench@isp-bench.test"
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


def smtp_source(port: int, sessions: int, count: int, size: int) -> float:
    t0 = time.monotonic()
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


def latency(port: int, sessions: int, size: int) -> tuple[float, float]:
    total = LATENCY_COUNT[sessions] if size == 1024 else max(100, LATENCY_COUNT[sessions] // 4)
    per = max(1, total // sessions)
    line = b"x" * 78 + b"\r\n"
    body = (f"From: {SENDER}\r\nTo: {RCPT}\r\nSubject: bench\r\n\r\n".encode()
            + line * max(1, size // len(line)))
    out: list[float] = []

    async def main() -> None:
        await asyncio.gather(*(_latency_session(port, per, body, out) for _ in range(sessions)))

    asyncio.run(main())
    out.sort()
    return statistics.median(out) * 1000, out[min(len(out) - 1, int(len(out) * 0.99))] * 1000


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


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="a tenth of the counts (smoke run)")
    ap.add_argument("--only", choices=("relay", "postfix"), help="benchmark one side only")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/relay: needs root (private Postfix instance)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="bench-relay-"))
    cfg = setup_box(work / "box")
    relay = RelayProcess(Path(cfg.source), work / "relay.log")
    pf = PrivatePostfix.create("bench", {"default_transport": "discard", "local_transport": "discard",
                                         "relay_transport": "discard", "smtpd_tls_security_level": "none"})
    results: list[dict[str, object]] = []
    try:
        relay.start(cfg)
        pf.start()
        wait_port("127.0.0.1", pf.port)
        targets = {"relay": (cfg.listeners.mx.port, lambda: wait_drained(Path(cfg.paths.spool_dir) / "queue")),
                   "postfix": (pf.port, lambda: postfix_drained(pf))}
        for size in SIZES:
            for sessions in SESSIONS:
                count = COUNTS[(size, sessions)] // (10 if args.quick else 1)
                row: dict[str, object] = {"size": size, "sessions": sessions, "count": count}
                for name, (port, drain) in targets.items():
                    if args.only and name != args.only:
                        continue
                    drain()
                    rate = smtp_source(port, sessions, count, size)
                    drain()
                    p50, p99 = latency(port, sessions, size)
                    row[name] = {"msg_s": round(rate, 1), "p50_ms": round(p50, 2), "p99_ms": round(p99, 2)}
                    print(f"{name:8} {size // 1024:>4} KB {sessions:>4} sessions: {rate:8.1f} msg/s "
                          f"p50 {p50:7.2f} ms p99 {p99:7.2f} ms", flush=True)
                results.append(row)
    finally:
        relay.stop()
        pf.remove()
    print(f"\nmachine: {os.cpu_count()} cores\n")
    print("| size | sessions | messages | relay msg/s | Postfix msg/s | ratio | relay p50 / p99 ms | Postfix p50 / p99 ms |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in results:
        r, p = row.get("relay"), row.get("postfix")
        ratio = f"{r['msg_s'] / p['msg_s']:.2f}x" if r and p else "-"  # type: ignore[index]
        rs = f"{r['msg_s']}" if r else "-"  # type: ignore[index]
        ps = f"{p['msg_s']}" if p else "-"  # type: ignore[index]
        rl = f"{r['p50_ms']} / {r['p99_ms']}" if r else "-"  # type: ignore[index]
        pl = f"{p['p50_ms']} / {p['p99_ms']}" if p else "-"  # type: ignore[index]
        print(f"| {int(row['size']) // 1024} KB | {row['sessions']} | {row['count']} | {rs} | {ps} | {ratio} | {rl} | {pl} |")  # type: ignore[call-overload]
    if args.out:
        args.out.write_text(json.dumps({"cores": os.cpu_count(), "results": results}, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
