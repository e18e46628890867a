"""The outside probes: what anyone can check against a relay from the network.

Safety rules every probe keeps (docs/practice.md "What the probe never does"):

- the envelope sender is always in the probe's own domain (``Code.probe_domain``,
  under ``.invalid``), and relay tests only ever name recipients in that domain,
  which does not resolve: a relay that wrongly accepts has nowhere to send it;
- every session ends at RCPT with RSET/QUIT, or is dropped inside DATA before a
  proper end-of-data, so no message is completed; the one exception is the
  authenticated From: test, whose only recipient is the candidate's own abuse@
  and which a correct relay refuses at the end of DATA;
- every wait is bounded (``Wire`` timeouts) and the connection battery is
  bounded by the code's own number.

Each probe returns results for its controls: ``pass``, ``fail`` or ``not-run``
(an input the probe needs was not given), with the exact reply as evidence.
"""

from __future__ import annotations

import base64
import datetime as dt
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509

from appliance.practice.code import Code
from appliance.practice.wire import Reply, Wire, WireError
from appliance.tlsfiles import spki_sha256

PASS, FAIL, NOT_RUN = "pass", "fail", "not-run"
EHLO_NAME = "probe.practice-probe.invalid"
# How long a probe waits for a reply that a correct server never sends (smuggling, injection).
QUIET_WAIT = 2.0


@dataclass(frozen=True)
class Result:
    control: str
    status: str
    evidence: str

    def as_dict(self) -> dict[str, str]:
        return {"control": self.control, "status": self.status, "evidence": self.evidence}


@dataclass
class Target:
    host: str
    port: int
    domain: str  # the candidate's mail domain (abuse@, forged sender)
    pins: tuple[str, ...] = ()  # the registry's SPKI pins for this relay (empty: not a member yet)
    member: str | None = None
    source: str | None = None  # local address to probe from (the probe's registered address)
    submission: tuple[str, int] | None = None  # for the authenticated From: test
    account: tuple[str, str] | None = None  # login, password of the candidate's test account
    timeout: float = 10.0
    observed: dict[str, Any] = field(default_factory=dict)  # facts for the report (certificate pin, ...)

    def wire(self, host: str | None = None, port: int | None = None) -> Wire:
        return Wire(host or self.host, port or self.port, self.timeout, self.source)


def _sender(code: Code) -> str:
    return f"probe@{code.probe_domain}"


def _ehlo(w: Wire) -> Reply:
    g = w.greeting()
    if g.code != 220:
        raise WireError(f"greeting: {g.text}")
    r = w.cmd(f"EHLO {EHLO_NAME}")
    if r.code != 250:
        raise WireError(f"EHLO: {r.text}")
    return r


def _tls_session(t: Target) -> tuple[Wire, Reply]:
    """A session upgraded with STARTTLS and the second EHLO's reply (RFC 3207 4.2)."""
    w = t.wire()
    try:
        ehlo = _ehlo(w)
        if "STARTTLS" not in ehlo.keywords():
            raise WireError(f"STARTTLS not offered: {ehlo.text}")
        r = w.cmd("STARTTLS")
        if r.code != 220:
            raise WireError(f"STARTTLS: {r.text}")
        w.starttls()
        return w, w.cmd(f"EHLO {EHLO_NAME}")
    except BaseException:
        w.close()
        raise


def _quit(w: Wire) -> None:
    try:
        w.cmd("QUIT")
    except WireError:
        pass
    w.close()


def _envelope(w: Wire, sender: str, rcpt: str) -> tuple[Reply, Reply | None]:
    """MAIL and RCPT; RCPT is not sent if MAIL is refused."""
    m = w.cmd(f"MAIL FROM:<{sender}>")
    if m.code // 100 != 2:
        return m, None
    return m, w.cmd(f"RCPT TO:<{rcpt}>")


def _envelope_session(t: Target, sender: str, rcpt: str) -> tuple[Reply, Reply | None]:
    """A fresh session to T that ends at RCPT (then QUIT): the MAIL and RCPT replies of ``_envelope``."""
    with t.wire() as w:
        _ehlo(w)
        replies = _envelope(w, sender, rcpt)
        _quit(w)
    return replies


def _start_data(w: Wire, sender: str, rcpt: str, as_who: str = "") -> None:
    """MAIL, RCPT and DATA up to the 354 go-ahead, or a WireError naming the step that was refused."""
    m, r = _envelope(w, sender, rcpt)
    if r is None or r.code // 100 != 2:
        raise WireError(f"cannot reach DATA{as_who}: {(r or m).text}")
    d = w.cmd("DATA")
    if d.code != 354:
        raise WireError(f"DATA: {d.text}")


# --- open relay ---------------------------------------------------------------------------------

def relay_recipients(code: Code, domain: str) -> list[tuple[str, str]]:
    """(what it tries, recipient): each one names the probe's own domain as the final destination."""
    p = code.probe_domain
    return [
        ("foreign domain", f"relay-test@{p}"),
        ("percent hack", f"relay-test%{p}@{domain}"),
        ("bang path", f"{p}!relay-test@{domain}"),
        ("source route", f"@{domain}:relay-test@{p}"),
        ("quoted local part", f'"relay-test@{p}"@{domain}'),
    ]


def open_relay(t: Target, code: Code) -> list[Result]:
    seen: list[str] = []
    for what, rcpt in relay_recipients(code, t.domain):
        # One session per attempt: a refusal must not be the side effect of an earlier one.
        try:
            m, r = _envelope_session(t, _sender(code), rcpt)
        except WireError as exc:
            seen.append(f"{what}: {exc}")
            continue
        if r is not None and r.code // 100 == 2:
            return [Result("no-open-relay", FAIL, f"{what}: RCPT TO:<{rcpt}> -> {r.text}")]
        seen.append(f"{what}: {(r or m).text}")
    return [Result("no-open-relay", PASS, "; ".join(seen))]


# --- SMTP smuggling -----------------------------------------------------------------------------

SMUGGLING_VARIANTS: list[tuple[str, bytes]] = [
    ("<LF>.<LF>", b"\n.\n"),
    ("<LF>.<CR><LF>", b"\n.\r\n"),
    ("<CR><LF>.<LF>", b"\r\n.\n"),
    ("<CR>.<CR>", b"\r.\r"),
]


def _smuggle(t: Target, code: Code, name: str, seq: bytes) -> tuple[bool, str]:
    """(ended DATA at SEQ, evidence). The session is dropped inside DATA: no message is completed."""
    with t.wire() as w:
        _ehlo(w)
        _start_data(w, _sender(code), f"abuse@{t.domain}")
        w.send(b"From: <" + _sender(code).encode() + b">\r\nSubject: practice probe (smuggling)\r\n\r\n"
               b"smuggling test" + seq + b"MAIL FROM:<smuggled@" + code.probe_domain.encode() + b">\r\n")
        try:
            got = w.pending(QUIET_WAIT)
        except WireError as exc:  # dropped the session without taking anything
            return False, f"{name}: {exc}"
        if got is None:
            return False, f"{name}: still in DATA after {QUIET_WAIT:.0f} s (not an end of data)"
        # 2xx: the sequence ended the data and the message was taken.
        return got.code // 100 == 2, f"{name}: {got.text}"


def smuggling(t: Target, code: Code) -> list[Result]:
    with ThreadPoolExecutor(len(SMUGGLING_VARIANTS)) as pool:
        futures = [pool.submit(_smuggle, t, code, n, s) for n, s in SMUGGLING_VARIANTS]
        outcomes = []
        for f in futures:
            try:
                outcomes.append(f.result())
            except (WireError, TimeoutError) as exc:
                return [Result("no-smuggling", FAIL, f"could not test: {exc}")]
    ended = [ev for ok, ev in outcomes if ok]
    if ended:
        return [Result("no-smuggling", FAIL, "; ".join(ended))]
    return [Result("no-smuggling", PASS, "; ".join(ev for _, ev in outcomes))]


# --- STARTTLS, command injection, certificate ---------------------------------------------------

def _certificate(t: Target, sock: ssl.SSLSocket) -> Result:
    der = sock.getpeercert(binary_form=True)
    if not der:
        return Result("tls-certificate", FAIL, "no server certificate")
    cert = x509.load_der_x509_certificate(der)
    pin = spki_sha256(der)
    t.observed["spki_sha256"] = pin
    now = dt.datetime.now(dt.UTC)
    dates = f"valid {cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d}"
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        return Result("tls-certificate", FAIL, f"outside its validity: {dates}")
    if t.member is None:
        return Result("tls-certificate", PASS, f"{dates}; SPKI {pin} (not a member yet: record this pin)")
    if not t.pins:
        return Result("tls-certificate", FAIL, f"{dates}; SPKI {pin}, but the registry lists no pin for member {t.member}")
    if pin not in t.pins:
        return Result("tls-certificate", FAIL, f"SPKI {pin} is not among member {t.member}'s pins {', '.join(t.pins)}")
    return Result("tls-certificate", PASS, f"{dates}; SPKI {pin} matches the registry")


def starttls(t: Target, code: Code) -> list[Result]:
    try:
        w, ehlo2 = _tls_session(t)
    except WireError as exc:
        return [Result("starttls", FAIL, str(exc)), Result("tls-certificate", FAIL, f"no TLS session: {exc}")]
    try:
        assert isinstance(w.sock, ssl.SSLSocket)
        cert = _certificate(t, w.sock)
        version = w.sock.version()
    finally:
        _quit(w)
    try:
        injection = _injection(t)
    except (WireError, TimeoutError) as exc:
        injection = f"STARTTLS with a pipelined command: {exc}"
    if injection is not None:
        return [Result("starttls", FAIL, injection), cert]
    return [Result("starttls", PASS, f"STARTTLS offered, {version}, EHLO after TLS: {ehlo2.last}; "
                   "a command pipelined behind STARTTLS was not executed"), cert]


def _injection(t: Target) -> str | None:
    """CVE-2011-0411: plaintext sent behind STARTTLS must not be answered inside TLS. None if it is not."""
    with t.wire() as w:
        _ehlo(w)
        w.send(b"STARTTLS\r\nRSET\r\n")
        r = w.greeting()  # the reply to STARTTLS, with a bounded wait
        if r.code != 220:
            return f"STARTTLS with a pipelined command: {r.text}"
        try:
            w.starttls()
        except WireError:
            return None  # the server read our RSET as TLS data: it was not executed
        try:
            got = w.pending(QUIET_WAIT)
        except WireError:
            return None
        if got is not None:
            return f"the RSET sent before TLS was answered inside TLS: {got.text}"
    return None


# --- AUTH before TLS ----------------------------------------------------------------------------

def auth_before_tls(t: Target, code: Code) -> list[Result]:
    try:
        with t.wire() as w:
            ehlo = _ehlo(w)
            offered = [ln for ln in ehlo.lines[1:] if ln[4:].upper().startswith(("AUTH ", "AUTH="))]
            cred = base64.b64encode(b"\0probe@" + code.probe_domain.encode() + b"\0not-a-password").decode()
            r = w.cmd(f"AUTH PLAIN {cred}")
            _quit(w)
    except WireError as exc:
        return [Result("auth-tls-only", FAIL, f"could not test: {exc}")]
    if offered:
        return [Result("auth-tls-only", FAIL, f"AUTH advertised before TLS: {offered[0]}")]
    # 334/235 took the credentials; 535 checked them: a password crossed in clear either way.
    if r.code in (235, 334, 535) or r.code // 100 == 2:
        return [Result("auth-tls-only", FAIL, f"AUTH PLAIN before TLS: {r.text}")]
    return [Result("auth-tls-only", PASS, f"not advertised before TLS; AUTH PLAIN -> {r.text}")]


# --- forged senders -----------------------------------------------------------------------------

def forged_sender(t: Target, code: Code) -> list[Result]:
    forged = f"postmaster@{t.domain}"
    try:
        m, r = _envelope_session(t, forged, f"abuse@{t.domain}")
    except WireError as exc:
        return [Result("forged-sender", FAIL, f"could not test: {exc}")]
    if r is not None and r.code // 100 == 2:
        return [Result("forged-sender", FAIL, f"MAIL FROM:<{forged}> -> {m.text}; RCPT -> {r.text}")]
    return [Result("forged-sender", PASS, f"MAIL FROM:<{forged}> from outside -> {(r or m).text}")]


def forged_from(t: Target, code: Code) -> list[Result]:
    if t.account is None or t.submission is None:
        return [Result("forged-from-auth", NOT_RUN, "no test account given (--account LOGIN --password-stdin --submission PORT)")]
    login, password = t.account
    forged = f"abuse@{t.domain}" if login.lower() != f"abuse@{t.domain}" else f"postmaster@{t.domain}"
    try:
        w = Wire(t.submission[0], t.submission[1], t.timeout, t.source)
        try:
            _ehlo(w)
            if w.cmd("STARTTLS").code != 220:
                raise WireError("submission: STARTTLS refused")
            w.starttls()
            w.cmd(f"EHLO {EHLO_NAME}")
            a = w.cmd("AUTH PLAIN " + base64.b64encode(f"\0{login}\0{password}".encode()).decode())
            if a.code != 235:
                raise WireError(f"test account refused: {a.text}")
            _start_data(w, login, f"abuse@{t.domain}", " with the test account")
            w.send(f"From: <{forged}>\r\nTo: <abuse@{t.domain}>\r\nSubject: practice probe (forged From:)\r\n"
                   "\r\nThis message tests that a forged From: is refused.\r\n.\r\n".encode())
            end = w.reply()
        finally:
            _quit(w)
    except (WireError, TimeoutError) as exc:
        return [Result("forged-from-auth", FAIL, f"could not test: {exc}")]
    if end.code // 100 == 2:
        return [Result("forged-from-auth", FAIL, f"{login} sent From: <{forged}>: {end.text}")]
    return [Result("forged-from-auth", PASS, f"{login} sending From: <{forged}> -> {end.text}")]


# --- rate limit and reply codes for limits ------------------------------------------------------

def rate_limit(t: Target, code: Code) -> list[Result]:
    """Open bound+1 connections at once; one must be refused with a 4xx. Bounded by the code's number."""
    n = int(code.bound("max_concurrent_connections")) + 1
    wires: list[Wire] = []
    greetings: list[str] = []
    try:
        for _ in range(n):
            try:
                w = t.wire()
            except WireError as exc:
                greetings.append(f"connect: {exc}")
                continue
            wires.append(w)
            try:
                greetings.append(w.greeting().text)
            except WireError as exc:
                greetings.append(str(exc))
    finally:
        for w in wires:
            w.close()
    limited = [g for g in greetings if g[:1] == "4"]
    permanent = [g for g in greetings if g[:1] == "5"]
    accepted = sum(1 for g in greetings if g.startswith("220"))
    out = []
    if limited:
        out.append(Result("rate-limit", PASS, f"{accepted} of {n} concurrent connections greeted, then: {limited[0]}"))
    else:
        out.append(Result("rate-limit", FAIL, f"{accepted} of {n} concurrent connections greeted 220 and none was "
                          f"limited (bound {n - 1})" + (f"; other: {permanent[0]}" if permanent else "")))
    if permanent:
        out.append(Result("no-5xx-for-limits", FAIL, f"a connection over the limit got a permanent reply: {permanent[0]}"))
    elif limited:
        out.append(Result("no-5xx-for-limits", PASS, f"the limit answered {limited[0]}"))
    else:
        # Judged by rate-limit already; a second failure for the same cause would hide which control broke.
        out.append(Result("no-5xx-for-limits", NOT_RUN, "no limit engaged, so its reply code could not be seen"))
    return out


# --- abuse@ -------------------------------------------------------------------------------------

def abuse_mailbox(t: Target, code: Code) -> list[Result]:
    rcpt = f"abuse@{t.domain}"
    try:
        m, r = _envelope_session(t, _sender(code), rcpt)
    except WireError as exc:
        return [Result("abuse-mailbox", FAIL, f"could not test: {exc}")]
    if r is not None and r.code // 100 == 2:
        return [Result("abuse-mailbox", PASS, f"RCPT TO:<{rcpt}> -> {r.text}")]
    return [Result("abuse-mailbox", FAIL, f"RCPT TO:<{rcpt}> -> {(r or m).text}")]


# The order probes run in; the connection battery runs alone, last, so its connections cannot
# make another probe's session look limited.
PROBES = {
    "open_relay": open_relay,
    "smuggling": smuggling,
    "starttls": starttls,
    "auth_before_tls": auth_before_tls,
    "forged_sender": forged_sender,
    "forged_from": forged_from,
    "abuse_mailbox": abuse_mailbox,
    "rate_limit": rate_limit,
}


def run_all(t: Target, code: Code) -> list[Result]:
    wanted = {c.probe for c in code.controls if c.kind == "outside"}
    results: dict[str, Result] = {}
    for name, probe in PROBES.items():
        if name not in wanted:
            continue
        started = time.monotonic()
        for r in probe(t, code):
            results[r.control] = r
        t.observed.setdefault("seconds", {})[name] = round(time.monotonic() - started, 2)
    # Exactly the code's outside controls, in the code's order.
    return [results[c.id] for c in code.controls if c.kind == "outside" and c.id in results]
