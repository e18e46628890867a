"""Where a message's time goes, command by command: the relay vs a private Postfix that delivers to a Maildir.

    sudo .venv/bin/python -m bench.relay.steps [--messages 300] [--rounds 2]

One client, a new connection per message (as smtp-source does in bench/relay/run.py), timing
each step from the client's side: connect to the banner, EHLO, MAIL, RCPT, DATA, the body and
its final "." to the 250, QUIT to the close. Prints p50 and p90 per step and the whole message's
p50/p90/p99, for the relay and for Postfix in turn, ROUNDS times. A short run (a few seconds a
round): it shows which step the relay loses time in, not throughput. Needs root (private Postfix).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import BinaryIO

from bench.relay.run import RCPT, SENDER, setup_box
from tests.helpers.postfix import PrivatePostfix
from tests.relay_back.relayproc import RelayProcess

STEPS = ("connect", "EHLO", "MAIL", "RCPT", "DATA", "body", "QUIT")
BODY = b"From: " + SENDER.encode() + b"\r\nSubject: steps\r\n\r\n" + (b"x" * 78 + b"\r\n") * 12 + b".\r\n"


def _reply(f: BinaryIO) -> bytes:
    while True:
        line = f.readline()
        if not line:
            raise ConnectionError("closed")
        if line[3:4] != b"-":
            return line


def _message(port: int, out: dict[str, list[float]]) -> None:
    t = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s, s.makefile("rb") as f:
        commands = ((b"", "connect"), (b"EHLO bench.test\r\n", "EHLO"), (f"MAIL FROM:<{SENDER}>\r\n".encode(), "MAIL"),
                    (f"RCPT TO:<{RCPT}>\r\n".encode(), "RCPT"), (b"DATA\r\n", "DATA"), (BODY, "body"),
                    (b"QUIT\r\n", "QUIT"))
        for cmd, name in commands:
            if cmd:
                s.sendall(cmd)
            line = _reply(f)
            if line[:1] not in b"23":
                raise RuntimeError(f"{name} answered {line!r}")
            if name == "QUIT":
                f.read()  # until the server closes
            now = time.perf_counter()
            out[name].append(now - t)
            t = now


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * q))] * 1000


def measure(port: int, messages: int) -> str:
    out: dict[str, list[float]] = {k: [] for k in STEPS}
    for _ in range(messages):
        _message(port, out)
    whole = [sum(x) for x in zip(*(out[k] for k in STEPS), strict=True)]
    steps = "  ".join(f"{k} {statistics.median(v) * 1000:.2f}/{_pct(v, 0.9):.2f}" for k, v in out.items())
    return (f"message p50 {_pct(whole, 0.5):.2f} p90 {_pct(whole, 0.9):.2f} p99 {_pct(whole, 0.99):.2f} ms | "
            f"per step p50/p90 ms: {steps}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=300, help="messages per server and round (bounded: 1-5000)")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    if not 1 <= args.messages <= 5000 or not 1 <= args.rounds <= 10:
        print("bench/relay/steps: --messages 1-5000, --rounds 1-10", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("bench/relay/steps: needs root (private Postfix instance)", file=sys.stderr)
        return 2
    print(f"load average at the start: {os.getloadavg()[0]:.2f}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench-steps-"))
    cfg = setup_box(work / "box")
    relay = RelayProcess(Path(cfg.source), work / "relay.log")
    pf = PrivatePostfix.create("bench-steps", {"virtual_mailbox_domains": RCPT.split("@")[1],
                                               "default_transport": "discard", "relay_transport": "discard",
                                               "smtpd_tls_security_level": "none"})
    try:
        relay.start(cfg)
        pf.start()
        for _ in range(args.rounds):
            for name, port in (("relay", cfg.listeners.mx.port), ("postfix_maildir", pf.port)):
                print(f"{name:16} {measure(port, args.messages)}", flush=True)
    finally:
        relay.stop()
        pf.remove()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
