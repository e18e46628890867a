"""A real PostgreSQL 15 for the fleet tests: initdb + pg_ctl in a temp dir, on loopback, port chosen free.

Run as the `postgres` user when the tests run as root (initdb refuses root), as the test user
otherwise. Clients log in over TCP with a password (scram-sha-256), as a box would with
`state.postgres_password_file`; the superuser uses the unix socket in the temp dir.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path

import tomli_w

PG_BIN = Path("/usr/lib/postgresql/15/bin")
DB = "appliance"
ROLE = "appliance"


def _free_port() -> int:
    # PostgreSQL cannot be given port 0; a port the OS just handed out is free enough for a test.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    def __init__(self) -> None:
        if not (PG_BIN / "initdb").exists():
            raise RuntimeError(f"{PG_BIN}/initdb missing: the Debian package postgresql-15 is a test peer "
                               "(scripts/peercheck.py); run `make test` to install it")
        self.user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        # Not under pytest's tmp_path: its parents are mode 0700 root, the postgres user could not enter.
        self.dir = Path(tempfile.mkdtemp(prefix="appliance-pg-"))
        self.data = self.dir / "data"
        self.port = _free_port()
        self.password = "pg test password"
        self.password_file = self.dir / "password"
        self.password_file.write_text(self.password + "\n")
        self.password_file.chmod(0o600)
        if os.geteuid() == 0:
            shutil.chown(self.dir, self.user)
        self.running = False

    def _run(self, *cmd: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout,
                              user=self.user if os.geteuid() == 0 else None, cwd=self.dir)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def init(self) -> None:
        pwfile = self.dir / "superuser-password"
        pwfile.write_text("superuser\n")
        if os.geteuid() == 0:
            shutil.chown(pwfile, self.user)
        self._run(str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "-E", "UTF8", "--no-sync",
                  "--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}")
        self.start()
        self.psql(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{self.password}'")
        self.psql(f"CREATE DATABASE {DB} OWNER {ROLE}")

    def start(self) -> None:
        opts = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c shared_buffers=16MB -c max_connections=40")
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "log"), "-w", "-t", "30",
                  "-o", opts, "start")
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """`fast`: the server ends every session and stops, as an operator's stop or a failover does."""
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-w", "-t", "30", "-m", mode, "stop",
                  check=False)
        self.running = False

    def psql(self, sql: str, db: str = "postgres") -> str:
        return self._run(str(PG_BIN / "psql"), "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-h", str(self.dir),
                         "-p", str(self.port), "-U", "postgres", "-d", db, "-c", sql).stdout.strip()

    def url(self, db: str = DB) -> str:
        return f"postgresql://{ROLE}@127.0.0.1:{self.port}/{db}"

    def new_database(self) -> str:
        """A fresh empty database owned by the appliance role (one per test); its name."""
        self._dbs = getattr(self, "_dbs", 0) + 1
        name = f"{DB}{self._dbs}"
        self.psql(f"CREATE DATABASE {name} OWNER {ROLE}")
        return name

    def use_in(self, config_file: Path, db: str = DB, redis_url: str = "redis://127.0.0.1:1/0") -> None:
        """Point the box of CONFIG_FILE at database DB: `[state] backend = "shared"` (REDIS_URL for its limiter)."""
        data = tomllib.loads(config_file.read_text())
        data["state"] = {"backend": "shared", "postgres_url": self.url(db),
                         "postgres_password_file": str(self.password_file), "redis_url": redis_url}
        config_file.write_text(tomli_w.dumps(data))

    def close(self) -> None:
        if self.running:
            self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


def running_pg() -> Iterator[PgServer]:
    """Body of each test module's `pg` fixture: a server with an empty `appliance` database, removed after."""
    server = PgServer()
    try:
        server.init()
        yield server
    finally:
        server.close()
