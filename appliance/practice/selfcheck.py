"""The inside checks: what a member verifies on its own box, from its own config and state.

Each check reads the real thing (the loaded config, the accounts database, the
registry agent's ``state.json``, the DKIM key and the DNS record, the TLS
certificate) and returns a ``Result`` with the facts it saw as evidence.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable

import dns.exception
import dns.resolver

from appliance.accounts import AccountStore
from appliance.config import Config
from appliance.practice.code import Code
from appliance.practice.probes import FAIL, PASS, Result
from appliance.tlsfiles import cert_expiry, dkim_txt_record

DNS_LIFETIME = 3.0


def limits(cfg: Config, code: Code) -> Result:
    lim = cfg.limits
    problems = []
    max_conn = code.bound("max_concurrent_connections")
    if lim.connections_per_ip > max_conn:
        problems.append(f"limits.connections_per_ip = {lim.connections_per_ip} > {max_conn:g}")
    if lim.member_default_connections > max_conn:
        problems.append(f"limits.member_default_connections = {lim.member_default_connections} > {max_conn:g}")
    if lim.member_default_per_minute > code.bound("max_member_messages_per_minute"):
        problems.append(f"limits.member_default_per_minute = {lim.member_default_per_minute:g} > "
                        f"{code.bound('max_member_messages_per_minute'):g}")
    for name, c in lim.classes.items():
        if c.messages_per_minute > code.bound("max_customer_messages_per_minute"):
            problems.append(f"limits.classes.{name}.messages_per_minute = {c.messages_per_minute:g} > "
                            f"{code.bound('max_customer_messages_per_minute'):g}")
        if c.per_day == 0 or c.per_day > code.bound("max_customer_messages_per_day"):
            problems.append(f"limits.classes.{name}.per_day = {c.per_day} (must be 1..{code.bound('max_customer_messages_per_day'):g})")
    if problems:
        return Result("limits-in-bounds", FAIL, "; ".join(problems))
    return Result("limits-in-bounds", PASS, f"connections_per_ip {lim.connections_per_ip}, member_default_connections "
                  f"{lim.member_default_connections}, {len(lim.classes)} customer class(es) within bounds")


def dkim(cfg: Config, code: Code) -> Result:
    try:
        want = dkim_txt_record(cfg.dkim.key)
    except (OSError, ValueError, TypeError) as exc:
        return Result("dkim-published", FAIL, f"dkim.key {cfg.dkim.key}: cannot load: {exc}")
    want_p = want.split("p=", 1)[1]
    # The relay's own resolver settings (relay.resolver), so the check asks what the relay would.
    rcfg = getattr(cfg.relay, "resolver", None)
    resolver = dns.resolver.Resolver(configure=not (rcfg and rcfg.nameservers))
    if rcfg is not None and rcfg.nameservers:
        resolver.nameservers = list(rcfg.nameservers)
        resolver.port = rcfg.port
    resolver.lifetime = DNS_LIFETIME
    seen = []
    for domain in cfg.dkim.domains or cfg.box.domains:
        name = f"{cfg.dkim.selector}._domainkey.{domain}"
        try:
            answer = resolver.resolve(name, "TXT", search=False)
        except (dns.exception.DNSException, OSError) as exc:
            return Result("dkim-published", FAIL, f"{name} TXT: {exc.__class__.__name__}: {exc}")
        # RFC 6376 3.6.2.2: the strings of one TXT record are concatenated.
        texts = [b"".join(r.strings).decode("ascii", "replace") for r in answer]
        if not any(want_p in t.replace(" ", "") for t in texts):
            return Result("dkim-published", FAIL, f"{name} TXT does not hold the key in {cfg.dkim.key}: {texts[:1]}")
        seen.append(name)
    return Result("dkim-published", PASS, f"key matches {', '.join(seen)}")


def abuse_delivery(cfg: Config, code: Code) -> Result:
    store = AccountStore(cfg.paths.accounts_db)
    try:
        owners = {d: store.owner_of(f"abuse@{d}") for d in cfg.box.domains}
    finally:
        store.close()
    missing = [f"abuse@{d}" for d, o in owners.items() if o is None]
    if missing:
        return Result("abuse-delivers", FAIL, f"no account or alias for {', '.join(missing)}")
    return Result("abuse-delivers", PASS, ", ".join(f"abuse@{d} -> {o}" for d, o in owners.items()))


def registry(cfg: Config, code: Code) -> Result:
    path = cfg.registry_dir / "state.json"
    try:
        st = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return Result("registry-fresh", FAIL, f"{path}: {exc}")
    if st.get("expired", True):
        return Result("registry-fresh", FAIL, f"{path}: registry expired (or unknown): {st}")
    if st.get("alarm"):
        return Result("registry-fresh", FAIL, f"registry agent alarm: {st['alarm']}")
    try:
        last = dt.datetime.fromisoformat(str(st["last_success"]).replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return Result("registry-fresh", FAIL, f"{path}: no last_success")
    age = (dt.datetime.now(dt.UTC) - last).total_seconds()
    bound = code.bound("max_registry_age_seconds")
    if age > bound:
        return Result("registry-fresh", FAIL, f"last successful sync {age:.0f} s ago (bound {bound:g} s)")
    return Result("registry-fresh", PASS, f"version {st.get('version')}, last successful sync {age:.0f} s ago")


def tls_expiry(cfg: Config, code: Code) -> Result:
    exp = cert_expiry(cfg.tls.cert)
    if exp is None:
        return Result("tls-not-expiring", FAIL, f"tls.cert {cfg.tls.cert}: unreadable")
    days = (exp - dt.datetime.now(dt.UTC)).total_seconds() / 86400
    if days < code.bound("min_certificate_days"):
        return Result("tls-not-expiring", FAIL, f"tls.cert expires {exp:%Y-%m-%d} ({days:.1f} days)")
    return Result("tls-not-expiring", PASS, f"tls.cert valid until {exp:%Y-%m-%d} ({days:.0f} days)")


CHECKS: dict[str, Callable[[Config, Code], Result]] = {
    "limits": limits,
    "dkim": dkim,
    "abuse_delivery": abuse_delivery,
    "registry": registry,
    "tls_expiry": tls_expiry,
}


def run_all(cfg: Config, code: Code) -> list[Result]:
    out = []
    for c in code.controls:
        if c.kind == "inside":
            try:
                out.append(CHECKS[c.probe](cfg, code))
            except Exception as exc:  # a check that breaks is a failed check, never a pass
                out.append(Result(c.id, FAIL, f"check failed: {exc.__class__.__name__}: {exc}"))
    return out
