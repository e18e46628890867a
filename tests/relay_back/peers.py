"""Real peers for the spool/delivery tests: smtp-sink, a loopback DNS server, a private Postfix."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import dns.flags
import dns.message
import dns.rdatatype
import dns.rrset

from appliance.devbox import free_port
from tests.helpers.box import wait_port


@dataclass
class SmtpSink:
    """Postfix's smtp-sink on 127.0.0.1: every transaction dumped to DIR/msg.* (-d)."""

    dir: Path
    port: int
    proc: subprocess.Popen[bytes]

    @classmethod
    def start(cls, d: Path, *extra: str, port: int = 0) -> SmtpSink:
        # smtp-sink drops to `nobody` before writing dumps, and pytest's tmp dirs are 0700:
        # dump into a world-writable dir of our own under /tmp (removed by stop()).
        d = Path(tempfile.mkdtemp(prefix="relay-back-sink-"))
        os.chmod(d, 0o777)
        port = port or free_port("127.0.0.1")
        proc = subprocess.Popen(
            ["smtp-sink", "-u", "nobody", "-d", f"{d}/msg.", *extra, f"127.0.0.1:{port}", "64"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_port("127.0.0.1", port)
        return cls(d, port, proc)

    def messages(self) -> list[bytes]:
        return [p.read_bytes() for p in sorted(self.dir.glob("msg.*"))]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


class DnsServer:
    """A tiny authoritative DNS server on 127.0.0.1 (dnspython wire format) answering MX queries from a table."""

    def __init__(self, mx: dict[str, list[tuple[int, str]]], a: dict[str, str]) -> None:
        self.mx, self.a = mx, a
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self._stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                wire, addr = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            q = dns.message.from_wire(wire)
            resp = dns.message.make_response(q)
            resp.flags |= dns.flags.AA
            qs = q.question[0]
            name = qs.name.to_text(omit_final_dot=True).lower()
            if qs.rdtype == dns.rdatatype.MX and name in self.mx:
                items = [f"{pref} {host}." for pref, host in self.mx[name]]
                resp.answer.append(dns.rrset.from_text(qs.name, 60, "IN", "MX", *items))
            elif qs.rdtype == dns.rdatatype.A and name in self.a:
                resp.answer.append(dns.rrset.from_text(qs.name, 60, "IN", "A", self.a[name]))
            elif name not in self.mx and name not in self.a:
                resp.set_rcode(dns.rcode.NXDOMAIN)
            self.sock.sendto(resp.to_wire(), addr)

    def resolver(self):  # type: ignore[no-untyped-def]
        import dns.asyncresolver

        r = dns.asyncresolver.Resolver(configure=False)
        r.nameservers = ["127.0.0.1"]
        r.port = self.port
        r.timeout = r.lifetime = 3
        return r

    def stop(self) -> None:
        self._stop = True
        self.thread.join(2)
        self.sock.close()


def require_peers(*tools: str) -> None:
    import pytest

    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.fail(f"missing test peers {missing}: run `make test` (it installs them)")
