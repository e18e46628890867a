"""knotd, authoritative for the test's zones, in a host of a test network namespace (tests/helpers/netns.py).

One helper for every tier that needs real DNS (tests/internet, tests/publish): write the zones, start knotd on
the host's address (port 53, UDP and TCP), load new zone data, simulate an outage, stop. Each zone may be
signed by knot's automatic DNSSEC signing (default policy); ``ds`` gives the DS record a validating
resolver is configured with.
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers import procs
from tests.helpers.netns import Host, listening
from tests.helpers.wait import wait_for

CONF = """\
server:
    rundir: "{d}/run"
    user: root:root
    listen: {ip}@53
log:
  - target: {d}/knot.log
    any: info
database:
    storage: "{d}/db"
template:
  - id: default
    storage: "{d}"
    zonefile-sync: -1
    journal-content: none
zone:
{zones}"""

ZONE = """\
  - domain: {domain}
    file: "{file}"
    dnssec-signing: {signed}
"""


@dataclass
class Zone:
    domain: str  # without the final dot: "test", "example.test", "0.16.172.in-addr.arpa"
    file: str  # the zone file's name in the Knot's directory
    signed: bool = False


@dataclass
class Knot:
    host: Host
    dir: Path
    zones: list[Zone] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def conf(self) -> Path:
        return self.dir / "knot.conf"

    def write_zone(self, file: str, text: str) -> None:
        """The zone file FILE (master file format, RFC 1035 §5) in this server's directory."""
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / file).write_text(text)

    def start(self) -> None:
        """Write the configuration, have knotc check it, start knotd and wait until it answers on port 53."""
        for sub in ("run", "db"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        zones = "".join(ZONE.format(domain=z.domain, file=z.file, signed="on" if z.signed else "off")
                        for z in self.zones)
        self.conf.write_text(CONF.format(d=self.dir, ip=self.host.address, zones=zones))
        check = self.host.run("knotc", "-c", str(self.conf), "conf-check")
        assert check.returncode == 0, f"knot config refused: {check.stdout}{check.stderr}"
        with open(self.dir / "knotd.out", "ab") as out:
            self.proc = self.host.popen("knotd", "-c", str(self.conf), stdout=out, stderr=out)
        wait_for("knotd listening on 53", lambda: listening(self.host, 53, "u") or self.proc.poll() is not None, 30)
        assert self.proc.poll() is None, f"knotd exited: {self.log()}"

    def reload(self) -> None:
        """Serve what the zone files and ``zones`` say now. A restart, not `knotc reload`: the data (and
        the signing choice) the next query sees is exactly the new one, with nothing kept from before."""
        self.stop()
        self.start()

    def ds(self, domain: str) -> str | None:
        """The SHA-256 DS record of DOMAIN's KSK once knot has signed it (``keymgr DOMAIN. ds``), else None."""
        r = self.host.run("keymgr", "-c", str(self.conf), f"{domain}.", "ds")
        lines = [line for line in r.stdout.splitlines() if " DS " in line and " 2 " in line.split(" DS ", 1)[1][:12]]
        return lines[0].strip() if r.returncode == 0 and lines else None

    def pause(self) -> None:
        """A DNS outage: the server stops answering (queries time out), nothing is refused."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)  # a paused knotd cannot act on SIGTERM
        procs.stop(self.proc, timeout=10)
        self.proc = None

    def log(self) -> str:
        parts = [p.read_text(errors="replace") for p in (self.dir / "knot.log", self.dir / "knotd.out") if p.exists()]
        return "\n".join(parts)[-4000:]
