"""A 25 MB message through 20 concurrent sessions: the real relay's RSS stays under 100 MB (read from /proc).

The messages go to a consortium member that lists no relay hosts, so delivery holds
them (and, holding them, never reads them): what is measured is the receiving side,
streamed to disk, which is the point. All sessions log in first; the peak (VmHWM,
reset through /proc/PID/clear_refs once every session is at DATA) then covers the 20
transfers, not the password checks (argon2 is memory-hard on purpose: 64 MB per
check in flight, a cost of AUTH, not of a session).
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import ssl
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomli_w

from appliance.spool.format import decode
from tests.relay_front.relay import PASSWORD, Relay, client_tls, make_relay

pytestmark = pytest.mark.slow

SIZE = 25 * 1024 * 1024
SESSIONS = 20
RSS_LIMIT_KB = 100 * 1024
LINE = b"0123456789abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ .,;:-_!? 0123456789\r\n"


@pytest.fixture(scope="module")
def big_relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    r = make_relay(tmp_path_factory.mktemp("stream"), name="stream",
                   relay={"max_message_size": SIZE + 1024 * 1024})
    data = tomllib.loads(r.config_file.read_text())
    limits = data.setdefault("limits", {})
    limits["connections_per_ip"] = 100
    limits["classes"] = {"default": {"messages_per_minute": 1000, "burst": 1000, "per_day": 0}}
    r.config_file.write_text(tomli_w.dumps(data))
    reg = json.loads(r.registry_file.read_text())
    reg["members"].append({"id": "isp-h", "name": "ISP H", "status": "active", "abuse": "abuse@isp-h.test",
                           "domains": ["isp-h.test"], "relays": []})
    r.registry_file.write_text(json.dumps(reg))
    r.start()
    yield r
    r.stop()
    # 500 MB of held mail: not left on the test machine's disk.
    shutil.rmtree(r.cfg.paths.spool_dir, ignore_errors=True)


def rss_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


class Client:
    def __init__(self, relay: Relay, ctx: ssl.SSLContext) -> None:
        raw = socket.create_connection(("127.0.0.1", relay.port("submissions")), timeout=120)
        self.sock = ctx.wrap_socket(raw, server_hostname="mx.example.test")
        self.file = self.sock.makefile("rb")
        self.reply()

    def reply(self) -> str:
        lines = []
        while True:
            line = self.file.readline().decode()
            if not line:
                raise ConnectionError("closed")
            lines.append(line.rstrip())
            if line[3:4] != "-":
                return "\n".join(lines)

    def cmd(self, text: str) -> str:
        self.sock.sendall(text.encode() + b"\r\n")
        return self.reply()

    def up_to_data(self) -> None:
        assert self.cmd("EHLO client.test").startswith("250")
        auth = base64.b64encode(f"\0alice@example.test\0{PASSWORD}".encode()).decode()
        assert self.cmd(f"AUTH PLAIN {auth}").startswith("235")
        assert self.cmd("MAIL FROM:<alice@example.test>").startswith("250")
        assert self.cmd("RCPT TO:<holder@isp-h.test>").startswith("250")
        assert self.cmd("DATA").startswith("354")

    def send_big(self, tag: str) -> str:
        head = (f"From: alice@example.test\r\nTo: holder@isp-h.test\r\nSubject: big {tag}\r\n"
                f"Bcc: hidden@isp-h.test\r\n\r\n").encode()
        self.sock.sendall(head)
        block = LINE * (65536 // len(LINE))
        sent = len(head)
        while sent < SIZE:  # bounded: SIZE bytes
            self.sock.sendall(block)
            sent += len(block)
        self.sock.sendall(b".\r\n")
        return self.reply()


def test_25mb_through_20_sessions_keeps_relay_rss_under_100mb(big_relay: Relay) -> None:
    assert big_relay.proc is not None
    pid = big_relay.proc.pid
    ctx = client_tls(big_relay)
    replies: list[str] = []
    errors: list[BaseException] = []
    ready = threading.Barrier(SESSIONS + 1, timeout=120)
    go = threading.Barrier(SESSIONS + 1, timeout=120)

    def one(i: int) -> None:
        try:
            c = Client(big_relay, ctx)
            c.up_to_data()
        except BaseException as exc:  # reported below, with the others
            errors.append(exc)
            ready.abort()
            return
        ready.wait()
        go.wait()
        try:
            replies.append(c.send_big(str(i)))
            c.cmd("QUIT")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(SESSIONS)]
    for t in threads:
        t.start()
    try:
        ready.wait()
    except threading.BrokenBarrierError:
        go.abort()
        for t in threads:
            t.join(30)
        raise AssertionError(f"sessions did not reach DATA: {errors[:3]}") from None
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS (proc(5))
    at_data = rss_kb(pid, "VmRSS")
    go.wait()
    peak = 0
    while any(t.is_alive() for t in threads):
        peak = max(peak, rss_kb(pid, "VmRSS"))
        for t in threads:
            t.join(0.2)
    hwm = rss_kb(pid, "VmHWM")
    print(f"relay RSS: {at_data // 1024} MB with the sessions at DATA, peak {max(peak, hwm) // 1024} MB")
    assert not errors, errors[:3]
    assert len(replies) == SESSIONS and all(r.startswith("250") for r in replies), replies[:3]
    assert max(peak, hwm) < RSS_LIMIT_KB, (
        f"relay RSS peaked at {max(peak, hwm) // 1024} MB ({at_data // 1024} MB with the sessions at DATA)")
    # Every message is on disk whole, Bcc gone, DKIM-signed, held for its member (not read by delivery).
    queue = Path(big_relay.cfg.paths.spool_dir) / "queue"
    files = sorted(queue.iterdir())
    assert len(files) == SESSIONS
    msg = decode(files[0].read_bytes())
    assert len(msg.data) > SIZE and b"\r\nBcc:" not in msg.data[:4096] and msg.data.startswith(b"Received:")
    assert b"DKIM-Signature:" in msg.data[:4096]
    assert msg.data.endswith(LINE)

