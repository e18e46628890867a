"""The published DNS against ``expected_records`` (appliance/publish/records.py), and PTR = HELO name.

Missing records are warnings (a dev box has none); records that are present and would make mail
fail are errors: a DKIM key that is not the box's key, a TLSA record no certificate of the box
matches (DANE senders then defer everything, RFC 7672 2.2), more than one SPF, DMARC or MTA-STS
record (each RFC says such a domain has no policy / permerror), a PTR naming another host.
"""

from __future__ import annotations

import copy
import ipaddress
from collections.abc import Callable

import dns.exception
import dns.flags
import dns.name
import dns.rdatatype
import dns.resolver
import dns.reversename

from appliance.config import Config
from appliance.doctor import Finding
from appliance.publish.records import PublishError, Record, expected_records


class Unanswered(Exception):
    """The resolver gave no answer at all (timeout, SERVFAIL from every server)."""


def _ask_signed(resolver: dns.resolver.Resolver, name: str, rtype: str) -> tuple[list[str], bool]:
    """RDATA of NAME/RTYPE in text form ([] for NXDOMAIN or no data) and whether the answer is
    DNSSEC-signed (AD from a validating resolver, or RRSIGs from a signed zone); Unanswered when
    DNS does not answer."""
    try:
        answer = resolver.resolve(name, rtype, raise_on_no_answer=False, search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return [], False
    except (dns.exception.Timeout, dns.resolver.NoNameservers, dns.resolver.LifetimeTimeout) as exc:
        raise Unanswered(str(exc) or type(exc).__name__) from None
    if answer.rrset is None:
        return [], False
    response = answer.response
    signed = bool(response.flags & dns.flags.AD) or any(
        rr.rdtype == dns.rdatatype.RRSIG and rr.covers == answer.rrset.rdtype for rr in response.answer)
    if rtype == "TXT":
        return [b"".join(r.strings).decode("utf-8", "replace") for r in answer.rrset], signed
    return [r.to_text() for r in answer.rrset], signed


def _ask(resolver: dns.resolver.Resolver, name: str, rtype: str) -> list[str]:
    return _ask_signed(resolver, name, rtype)[0]


def _host(text: str) -> str:
    return text.lower().rstrip(".")


def _tags(txt: str) -> dict[str, str]:
    """Tag=value pairs of a DKIM/DMARC/STS/TLS-RPT record (RFC 6376 3.2 syntax), whitespace removed."""
    out = {}
    for part in txt.split(";"):
        k, _, v = part.partition("=")
        if k.strip():
            out[k.strip().lower()] = "".join(v.split())
    return out


def _same_txt(a: str, b: str) -> bool:
    return _tags(a) == _tags(b) if "=" in a else " ".join(a.split()).lower() == " ".join(b.split()).lower()


TXT_KINDS = (("v=spf1", "SPF"), ("v=dkim1", "DKIM"), ("v=dmarc1", "DMARC"), ("v=stsv1", "MTA-STS"),
             ("v=tlsrptv1", "TLS-RPT"))


def _txt_kind(value: str) -> tuple[str, str]:
    low = value.lower().replace(" ", "")
    for prefix, kind in TXT_KINDS:
        if low.startswith(prefix.replace(" ", "")):
            return prefix, kind
    return "", "TXT"


def _check_txt(rec: Record, published: list[str]) -> Finding:
    prefix, kind = _txt_kind(rec.value)
    check = f"dns {kind} {rec.name}"
    # DKIM records may omit v= (RFC 6376 3.6.1); any record with p= counts.
    mine = [t for t in published if t.lower().replace(" ", "").startswith(prefix.replace(" ", ""))
            or (kind == "DKIM" and "p" in _tags(t))]
    if not mine:
        return Finding(check, "warning", f"no {kind} record", f"publish: {rec.name} TXT \"{rec.value}\"")
    if kind == "DKIM":
        want = _tags(rec.value).get("p")
        if all(_tags(t).get("p") != want for t in mine):
            return Finding(check, "error", "the published DKIM key is not the box's key (dkim.key): "
                           "receivers see every signature fail",
                           f"replace it with: {rec.name} TXT \"{rec.value}\"")
        return Finding(check, "ok", "DKIM key matches dkim.key")
    if len(mine) > 1:
        # RFC 7208 4.5 (permerror), RFC 7489 6.6.3 (no DMARC), RFC 8461 3.1 (no policy), RFC 8460 3.
        return Finding(check, "error", f"{len(mine)} {kind} records: receivers ignore all of them",
                       f"keep exactly one: {rec.name} TXT \"{rec.value}\"")
    if _same_txt(mine[0], rec.value):
        return Finding(check, "ok", f"{kind} record as expected")
    what = {"MTA-STS": "a policy id that is not the box's: senders keep an older policy",
            "SPF": "an SPF record that differs from the box's (check it allows box.hostname)",
            }.get(kind, f"a {kind} record that differs from the box's")
    return Finding(check, "warning", f"{what}: {mine[0][:120]}", f"publish: {rec.name} TXT \"{rec.value}\"")


def _check_tlsa(rec: Record, published: list[str], signed: bool) -> Finding:
    check = f"dns TLSA {rec.name}"
    if not published:
        return Finding(check, "warning", "no TLSA record (DANE senders use opportunistic TLS)",
                       f"publish (in a DNSSEC-signed zone): {rec.name} TLSA {rec.value}")
    norm = {" ".join(p.lower().split()) for p in published}
    if " ".join(rec.value.lower().split()) in norm:
        if not signed:
            # RFC 7672 2.2: TLSA records that are not DNSSEC-validated are ignored by senders.
            return Finding(check, "warning", "TLSA matches, but the answer is not DNSSEC-signed: senders ignore it",
                           "sign the zone with DNSSEC (and publish its DS in the parent)")
        return Finding(check, "ok", "TLSA matches the box's certificate key, DNSSEC-signed")
    return Finding(check, "error", "TLSA records match no key of the box: DANE senders defer all mail to it",
                   f"replace them with: {rec.name} TLSA {rec.value}")


def _check_srv(rec: Record, published: list[str]) -> Finding:
    check = f"dns SRV {rec.name}"
    want = rec.value.split()
    got = [p.split() for p in published]
    if want[3] == ".":
        if any(g[3] != "." for g in got):
            return Finding(check, "warning", "SRV advertises a service the box does not offer",
                           f"publish {rec.name} SRV {rec.value} or remove it")
        return Finding(check, "ok", "service not offered, not advertised")
    if not got:
        return Finding(check, "warning", "no SRV record (clients cannot discover the server, RFC 6186)",
                       f"publish: {rec.name} SRV {rec.value}")
    if any(g[2] == want[2] and _host(g[3]) == _host(want[3]) for g in got):
        return Finding(check, "ok", f"SRV points to {_host(want[3])}:{want[2]}")
    return Finding(check, "warning", f"SRV points elsewhere: {published[0]}", f"publish: {rec.name} SRV {rec.value}")


def _check_simple(rec: Record, published: list[str], resolver: dns.resolver.Resolver) -> Finding:
    check = f"dns {rec.type} {rec.name}"
    if rec.type == "MX":
        want = _host(rec.value.split()[1])
        if any(_host(p.split()[1]) == want for p in published):
            return Finding(check, "ok", f"MX is {want}")
        if published:
            return Finding(check, "error", f"MX points elsewhere ({', '.join(published)}): mail does not reach the box",
                           f"publish: {rec.name} MX {rec.value}")
        return Finding(check, "warning", "no MX record", f"publish: {rec.name} MX {rec.value}")
    if rec.type == "CNAME":
        want = _host(rec.value)
        if any(_host(p) == want for p in published):
            return Finding(check, "ok", f"CNAME to {want}")
        # An A record with the box's address serves as well as a CNAME.
        mine, theirs = set(_ask(resolver, want, "A")), set(_ask(resolver, rec.name, "A"))
        if mine and mine == theirs:
            return Finding(check, "ok", f"A record is the address of {want}")
        return Finding(check, "warning", f"{rec.name} does not lead to the box", f"publish: {rec.name} CNAME {rec.value}")
    # A / AAAA
    if any(ipaddress.ip_address(p) == ipaddress.ip_address(rec.value) for p in published):
        return Finding(check, "ok", f"{rec.type} is {rec.value}")
    if published:
        return Finding(check, "error", f"{rec.name} has other addresses ({', '.join(published)})",
                       f"publish: {rec.name} {rec.type} {rec.value} (or fix publish.addresses)")
    return Finding(check, "warning", f"no {rec.type} record", f"publish: {rec.name} {rec.type} {rec.value}")


def _check_ptr(rec: Record, resolver: dns.resolver.Resolver) -> Finding:
    address = dns.reversename.to_address(dns.name.from_text(rec.name))
    check = f"dns PTR {address}"
    published = [_host(p) for p in _ask(resolver, rec.name, "PTR")]
    want = _host(rec.value)
    if want in published:
        return Finding(check, "ok", f"PTR of {address} is the HELO name {want}")
    if published:
        return Finding(check, "error", f"PTR of {address} is {', '.join(published)}, not the HELO name {want}: "
                       "receivers distrust the box", f"ask whoever owns {address} to set its PTR to {want}")
    return Finding(check, "warning", f"{address} has no PTR", f"ask whoever owns {address} to set its PTR to {want}")


def check_dns(cfg: Config, resolver: dns.resolver.Resolver) -> list[Finding]:
    try:
        records = expected_records(cfg)
    except PublishError as exc:
        return [Finding("dns", "error", str(exc), "fix the file the key names (appliance dns shows the records)")]
    where = ", ".join(f"{n}:{resolver.port}" for n in resolver.nameservers) or "no resolver configured"
    # One question first: with no DNS at all, say so once instead of timing out on every record.
    try:
        _ask(resolver, cfg.box.domains[0], "SOA")
    except Unanswered as exc:
        return [Finding("dns", "warning", f"DNS ({where}) does not answer ({exc}): {len(records)} records not checked",
                        "set relay.resolver.nameservers or /etc/resolv.conf, then run `appliance doctor` again")]
    findings: list[Finding] = []
    if not cfg.publish.addresses:
        findings.append(Finding("dns addresses", "warning", "publish.addresses is not set: A/AAAA and PTR not checked",
                                "set publish.addresses to the box's public IP addresses"))
    checkers: dict[str, Callable[[Record, list[str]], Finding]] = {"TXT": _check_txt, "SRV": _check_srv}
    # DO set (RFC 4035 3.2.1): a signed zone's answers come with their RRSIGs, a validating resolver sets AD.
    resolver = copy.copy(resolver)
    resolver.use_edns(0, dns.flags.DO, 1232)
    for rec in records:
        try:
            if rec.type == "PTR":
                findings.append(_check_ptr(rec, resolver))
                continue
            published, signed = _ask_signed(resolver, rec.name, rec.type)
            if rec.type == "TLSA":
                findings.append(_check_tlsa(rec, published, signed))
            elif rec.type in checkers:
                findings.append(checkers[rec.type](rec, published))
            else:
                findings.append(_check_simple(rec, published, resolver))
        except Unanswered as exc:
            findings.append(Finding(f"dns {rec.type} {rec.name}", "warning", f"DNS did not answer: {exc}",
                                    "check the resolver and the zone's name servers"))
    return findings
