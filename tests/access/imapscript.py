"""IMAP scripts as data, run against one server; tests/access/test_imap_diff_rfc.py compares two runs.

A script is a text file, one step a line (tests/access/diffscripts/*.imap, one file per area):

    # a comment
    A SELECT INBOX                       session A (logged in on first use) sends one command
    B STORE 1 +FLAGS (\\Deleted)         a second session of the same account
    A APPEND Box (\\Seen) {{plain}}      {{NAME}}: messages/NAME.eml as a synchronizing literal
    A APPEND Box {{+plain}}              {{+NAME}}: the same as a non-synchronizing literal (LITERAL+)
    A LOGIN {{=text}} x                  {{=TEXT}}: TEXT itself as a literal (\\r\\n escapes allowed)
    A LOGIN {{user}} {{password}}        the account's login and password, quoted; {{sasl-plain}} after
                                         AUTHENTICATE PLAIN: the SASL PLAIN response in base64
    A SELECT Box => uv:UIDVALIDITY (\\d+)   after the step, $uv is the first match of the regex
    A SELECT Box (QRESYNC ($uv 1))       $NAME: a captured value; $NAME+1: that number plus one
    A IDLE / A DONE                      IDLE up to the continuation; DONE reads to IDLE's tagged reply
    A !connect                           a new connection (after STARTTLS), not logged in
    A !load Box plain mime:\\Seen,$x      APPEND each message with a fixed date (and flags); one result
    A !deliver INBOX plain               a file into the Maildir's new/, as the relay delivers
    A !read EXISTS                       read what the server pushes until a line contains EXISTS
                                         (at most 5 s)
    A !sleep 1                           wait (at most 5 s)
    A ?STORE 1 +FLAGS (\\Seen)            run, but do not compare the answer (where the RFCs let servers
                                         differ, e.g. STORE in an EXAMINEd mailbox); later steps see the effect

Each step's result is (what was sent, the normalized answer, the raw answer). A step that times out
(the server said nothing within the timeout) ends the script: later steps would be meaningless.
"""

from __future__ import annotations

import base64
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.access.imapdiff import RawIMAP, normalize_strict

HERE = Path(__file__).with_name("diffscripts")
DATE = b'"30-Nov-2026 12:00:00 +0000"'
STEP_TIMEOUT = 10.0  # seconds a server may stay silent on one step


def message(name: str) -> bytes:
    """messages/NAME.eml with CRLF line ends (IMAP's canonical form)."""
    path = HERE / "messages" / f"{name}.eml"
    if not path.is_file():  # a typo in a script is the script's error, not the server's
        raise ValueError(f"no message {path}")
    raw = path.read_bytes()
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


@dataclass
class Step:
    line: int
    session: str
    text: str


def parse(path: Path) -> list[Step]:
    steps = []
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        session, _, text = line.partition(" ")
        if not re.fullmatch(r"[A-Z]", session) or not text:
            raise ValueError(f"{path.name}:{n}: a step is 'SESSION COMMAND' (SESSION one capital letter): {raw!r}")
        steps.append(Step(n, session, text))
    return steps


class StepTimeout(Exception):
    pass


@dataclass
class Server:
    """Where to run: HOST:PORT with STARTTLS; DELIVER(mailbox, data) drops a file into the Maildir's new/."""

    host: str
    port: int
    tls: ssl.SSLContext
    user: str
    password: str
    deliver: Callable[[str, bytes], None]


@dataclass
class Session:
    conn: RawIMAP
    idle_tag: bytes | None = None
    authenticated: bool = True


@dataclass
class Runner:
    server: Server
    sessions: dict[str, Session] = field(default_factory=dict)
    vars: dict[str, str] = field(default_factory=dict)
    today: bytes = field(default_factory=lambda: time.strftime("%d-%b-%Y", time.gmtime()).lstrip("0").encode())

    def session(self, name: str, login: bool = True) -> Session:
        if name not in self.sessions or login is False:
            if name in self.sessions:
                self.sessions[name].conn.sock.close()
            conn = RawIMAP(self.server.host, self.server.port, self.server.tls, timeout=STEP_TIMEOUT)
            if login:
                _, tagged = conn.command(b"LOGIN %s %s" % (_quoted(self.server.user), _quoted(self.server.password)))
                if not tagged.startswith(b"OK"):
                    raise AssertionError(f"LOGIN {self.server.user} refused: {tagged!r}")
            self.sessions[name] = Session(conn, authenticated=login)
        return self.sessions[name]

    def close(self) -> None:
        for s in self.sessions.values():
            try:
                s.conn.sock.settimeout(2)
                s.conn.close()
            except (OSError, ConnectionError):
                pass

    # --- one step -------------------------------------------------------------------------------------
    def run(self, step: Step) -> tuple[object, bytes]:
        """The normalized answer and the raw answer of STEP."""
        text, capture = step.text, None
        if " => " in text:
            text, _, cap = text.partition(" => ")
            name, _, rx = cap.partition(":")
            capture = (name.strip(), rx.strip())
        text = re.sub(r"\$([a-z][a-z0-9_]*)(\+1)?", self._var, text)
        unchecked = text.startswith("?")
        text = text.removeprefix("?")
        try:
            untagged, tagged = self._dispatch(step.session, text)
        except TimeoutError as exc:
            raise StepTimeout(f"no answer within {STEP_TIMEOUT}s") from exc
        raw = b"\r\n".join([*untagged, tagged])
        if capture is not None and (m := re.search(capture[1].encode(), raw)):
            self.vars[capture[0]] = m.group(1).decode()
        if unchecked:
            return ("not compared",), raw
        if text.startswith("!read"):  # what was pushed, normalized as any untagged answer
            return normalize_strict(untagged, b"READ", self.today, b"IDLE"), raw
        if text.startswith("!"):
            return (tagged, untagged), raw
        session = self.sessions.get(step.session)
        preauth = session is not None and not session.authenticated
        if session is not None and tagged.startswith(b"OK") and text.split(" ", 1)[0].upper() in ("LOGIN",
                                                                                                    "AUTHENTICATE"):
            session.authenticated = True
        return normalize_strict(untagged, tagged, self.today, text.encode(), preauth), raw

    def _var(self, m: re.Match[str]) -> str:
        if m.group(1) not in self.vars:
            return m.group(0)
        return str(int(self.vars[m.group(1)]) + 1) if m.group(2) else self.vars[m.group(1)]

    def _dispatch(self, name: str, text: str) -> tuple[list[bytes], bytes]:
        verb, _, rest = text.partition(" ")
        if verb == "!connect":
            s = self.session(name, login=False)
            return [], b"CONNECTED"
        if verb == "!sleep":
            time.sleep(min(5.0, float(rest)))
            return [], b"SLEPT"
        if verb == "!deliver":
            box, *names = rest.split()
            for n in names:
                self.server.deliver(box, message(n))
            return [], b"DELIVERED"
        s = self.session(name)
        if verb == "!load":
            box, *specs = rest.split()
            results = []
            for spec in specs:
                n, _, flags = spec.partition(":")
                cmd = b"APPEND %s (%s) %s" % (box.encode(), flags.replace(",", " ").encode(), DATE)
                results.append(s.conn.command(cmd, message(n))[1].split(b" ")[0])
            return [], b" ".join(results)
        if verb == "!read":
            return self._read_until(s, rest.encode()), b"READ"
        if verb.upper() == "DONE" and s.idle_tag is not None:
            tag, s.idle_tag = s.idle_tag, None
            s.conn.sock.sendall(b"DONE\r\n")
            return self._to_tag(s, tag)
        return self._command(s, text)

    def _read_until(self, s: Session, word: bytes) -> list[bytes]:
        got: list[bytes] = []
        deadline = time.monotonic() + 5
        s.conn.sock.settimeout(0.5)
        try:
            while time.monotonic() < deadline and not any(word in g for g in got):
                try:
                    got.append(s.conn.read_response())
                except TimeoutError:
                    continue
        finally:
            s.conn.sock.settimeout(STEP_TIMEOUT)
        return got

    def _to_tag(self, s: Session, tag: bytes) -> tuple[list[bytes], bytes]:
        untagged: list[bytes] = []
        for _ in range(1_000_000):  # bounded: a runaway server cannot keep the loop alive forever
            r = s.conn.read_response()
            if r.startswith(tag + b" "):
                return untagged, r[len(tag) + 1 :]
            untagged.append(r)
        raise StepTimeout("no tagged answer after a million responses")

    def _command(self, s: Session, text: str) -> tuple[list[bytes], bytes]:
        s.conn.n += 1
        tag = b"t%d" % s.conn.n
        parts = re.split(r"\{\{([^}]*)\}\}", text)
        pending = tag + b" " + parts[0].encode()
        untagged: list[bytes] = []
        for i in range(1, len(parts), 2):
            key, after = parts[i], parts[i + 1].encode()
            if key in ("user", "password"):
                pending += _quoted(self.server.user if key == "user" else self.server.password) + after
                continue
            if key == "sasl-plain":
                pending += base64.b64encode(b"\0%s\0%s" % (self.server.user.encode(),
                                                          self.server.password.encode())) + after
                continue
            nonsync, key = key.startswith("+"), key.removeprefix("+")
            data = (key[1:].encode().decode("unicode_escape").encode("latin-1") if key.startswith("=")
                    else message(key))
            if nonsync:
                pending += b"{%d+}\r\n" % len(data) + data + after
                continue
            s.conn.sock.sendall(pending + b"{%d}\r\n" % len(data))
            while True:  # up to the continuation request, or the tagged refusal of the literal
                r = s.conn.read_response()
                if r.startswith(b"+"):
                    break
                if r.startswith(tag + b" "):
                    return untagged, r[len(tag) + 1 :]
                untagged.append(r)
            pending = data + after
        s.conn.sock.sendall(pending + b"\r\n")
        if text.strip().upper() == "IDLE":
            for _ in range(1000):
                r = s.conn.read_response()
                if r.startswith(b"+"):
                    s.idle_tag = tag
                    return untagged, b"+ (idling)"
                if r.startswith(tag + b" "):
                    return untagged, r[len(tag) + 1 :]
                untagged.append(r)
        more, tagged = self._to_tag(s, tag)
        return untagged + more, tagged


def _quoted(s: str) -> bytes:
    return b'"' + s.encode().replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def run_script(path: Path, server: Server) -> list[tuple[Step, object, bytes]]:
    """Every step of PATH against SERVER: (step, normalized, raw); a timeout ends the run with a TIMEOUT step."""
    runner = Runner(server)
    out: list[tuple[Step, object, bytes]] = []
    try:
        for step in parse(path):
            try:
                norm, raw = runner.run(step)
            except StepTimeout as exc:
                out.append((step, ("TIMEOUT", str(exc)), b""))
                break
            except (ConnectionError, OSError) as exc:
                out.append((step, ("CONNECTION", type(exc).__name__), str(exc).encode()))
                runner.sessions.pop(step.session, None)
                continue
            out.append((step, norm, raw))
    finally:
        runner.close()
    return out
