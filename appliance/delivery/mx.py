"""Next hops for a domain from DNS (relay.outside = "mx"), and the TLS each must have.

RFC 5321 5.1: MX records by preference; no MX but an address record means the
domain itself is the implicit MX. RFC 7505: a null MX ("." at preference 0)
means the domain accepts no mail (permanent). NXDOMAIN is permanent; timeouts
and server failures are temporary.

The TLS decision (docs/internet.md "Outbound"), per MX host:
1. DANE (RFC 7672): the MX RRset and the host's addresses are DNSSEC-secure and
   ``_25._tcp.HOST`` has authenticated TLSA records: TLS is mandatory and the
   certificate must match them. A TLSA lookup that fails (SERVFAIL: bogus, or a
   timeout) makes the host unusable (RFC 7672 2.2), never plaintext.
2. else MTA-STS (RFC 8461) in force for the domain: ``enforce`` skips MX hosts the
   policy does not list (4.1) and requires a PKIX-valid certificate for the host
   name (4.2); ``testing`` only counts failures (TLS-RPT).
3. else opportunistic STARTTLS, as before.
A host under a policy that fails is a temporary failure (4.7.x): the message stays
queued with the reason, is retried, and bounces at ``relay.max_lifetime``.
"""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path

import dns.asyncresolver

from appliance.config import Config, ResolverConfig
from appliance.delivery.routing import Hop
from appliance.tlspolicy import mtasts, tlsrpt
from appliance.tlspolicy.dnssec import Lookup, LookupFailed, lookup, validating_resolver
from appliance.tlspolicy.hoptls import HopTls, Tlsa


class MxError(Exception):
    def __init__(self, permanent: bool, enhanced: str, text: str) -> None:
        super().__init__(text)
        self.permanent, self.enhanced, self.text = permanent, enhanced, text


@functools.lru_cache(maxsize=4)
def _resolver(nameservers: tuple[str, ...], port: int, timeout: float) -> dns.asyncresolver.Resolver:
    return validating_resolver(ResolverConfig(nameservers=list(nameservers), port=port, timeout=timeout))


def outbound_resolver(rc: ResolverConfig) -> dns.asyncresolver.Resolver:
    return _resolver(tuple(rc.nameservers), rc.port, rc.timeout)


async def _ask(res: dns.asyncresolver.Resolver, name: str, rdtype: str) -> Lookup:
    try:
        return await lookup(res, name, rdtype)
    except LookupFailed as exc:
        raise MxError(False, "4.4.3", str(exc)) from None


async def mx_hosts(res: dns.asyncresolver.Resolver, domain: str) -> tuple[list[str], bool]:
    """The MX host names by preference, and whether the MX RRset was DNSSEC-secure."""
    mx = await _ask(res, domain, "MX")
    if mx.nxdomain:
        raise MxError(True, "5.1.2", f"domain {domain} does not exist")
    if not mx.records:
        a = await _ask(res, domain, "A")
        if not a.records and not (await _ask(res, domain, "AAAA")).records:
            raise MxError(True, "5.1.2", f"domain {domain} has no MX and no address record")
        return [domain], a.secure  # RFC 5321 5.1: the domain is its own MX
    records = sorted(mx.records, key=lambda r: r.preference)  # type: ignore[attr-defined]
    hosts = [r.exchange.to_text(omit_final_dot=True) for r in records]  # type: ignore[attr-defined]
    if len(records) == 1 and hosts[0] in ("", "."):
        raise MxError(True, "5.1.10", f"domain {domain} accepts no mail (null MX)")
    return [h for h in hosts if h not in ("", ".")], mx.secure


async def _addresses(res: dns.asyncresolver.Resolver, host: str) -> tuple[list[str], bool]:
    """The host's addresses (IPv4 first), and whether every answer was secure; none on any DNS error."""
    out: list[str] = []
    secure = True
    for rdtype in ("A", "AAAA"):
        try:
            answer = await lookup(res, host, rdtype)
        except LookupFailed:
            secure = False
            continue
        out += [r.to_text() for r in answer.records]  # type: ignore[attr-defined]
        secure = secure and answer.secure
    return out, secure


async def outbound_hops(cfg: Config, domain: str, resolver: dns.asyncresolver.Resolver | None = None,
                        port: int = 25) -> tuple[Hop, ...]:
    """The hops for DOMAIN with the TLS each must have (the module's docstring); raises MxError."""
    ob = cfg.relay.outbound
    # An injected resolver (tests of plain MX routing) is used as it is; the configured one asks for AD.
    res = resolver or outbound_resolver(ob.resolver)
    hosts, mx_secure = await mx_hosts(res, domain)
    report_db = tlsrpt.db_path(cfg.paths.state_dir) if ob.tlsrpt else ""
    sts: mtasts.Policy | None = None
    if ob.mta_sts:
        found = await mtasts.find(domain, res, mtasts.Cache(Path(cfg.paths.state_dir) / "mta-sts.sqlite3"),
                                  ob.ca_file)
        if found.error is not None and report_db:
            await asyncio.to_thread(tlsrpt.record, report_db, tlsrpt.Result(
                domain, "sts", (), "", found.error.result_type, "", found.error.text))
        if found.policy is not None and found.policy.mode != "none":
            sts = found.policy
    hops: list[Hop] = []
    problems: list[str] = []
    for host in hosts:
        addrs, addr_secure = await _addresses(res, host)
        if not addrs:
            continue
        tls: HopTls | None = None
        if ob.dane and mx_secure and addr_secure:
            try:
                tlsa = await lookup(res, f"_{port}._tcp.{host}", "TLSA")
            except LookupFailed as exc:
                # RFC 7672 2.2: a failed TLSA lookup (bogus or unreachable) makes the host unusable.
                problems.append(f"DANE: {exc}; {host} not tried")
                if report_db:
                    await asyncio.to_thread(tlsrpt.record, report_db, tlsrpt.Result(
                        domain, "tlsa", (), host, "dnssec-invalid", "", str(exc)))
                continue
            if tlsa.records and tlsa.secure:
                records = tuple(Tlsa(r.usage, r.selector, r.mtype, r.cert) for r in tlsa.records)  # type: ignore[attr-defined]
                tls = HopTls("dane", True, domain, host, tlsa=records,
                             policy_strings=tuple(r.text() for r in records), report_db=report_db)
        if tls is None and sts is not None:
            if not sts.matches(host) and sts.mode == "enforce":
                problems.append(f"MTA-STS enforce: {host} is not among the policy's mx ({', '.join(sts.mx)})")
                continue
            tls = HopTls("sts", sts.mode == "enforce", domain, host, ca_file=ob.ca_file,
                         policy_strings=sts.strings(), report_db=report_db)
        hops += [Hop(host, port, address=a, tls=tls) for a in addrs]
    if not hops:
        if problems:
            raise MxError(False, "4.7.5", f"no usable MX host for {domain}: {'; '.join(problems)}")
        raise MxError(False, "4.4.3", f"no address for any MX host of {domain}")
    return tuple(hops)
