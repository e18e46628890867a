"""Every DNS record the operator should publish for this box (`appliance dns`, `appliance doctor`).

Records are derived from the config and the box's own key files, never typed by hand:
the DKIM record from ``dkim.key`` (the key the relay signs with, services/relay/app.py), the TLSA
records from the first certificate of ``tls.cert``, the MTA-STS id from the policy text.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass
from pathlib import Path

from appliance.config import Config, Listener
from appliance.publish import mtasts
from appliance.tlsfiles import dkim_txt_record, load_cert, spki_sha256

# Names the console answers for each local domain (docs/doctor.md): MTA-STS policy, Thunderbird
# autoconfig and Outlook autodiscover. Each is a CNAME to box.hostname.
WEB_NAMES = ("mta-sts", "autoconfig", "autodiscover")
HTTPS_PORT = 443

# RFC 6186 3.1 (IMAP, POP3, submission) and RFC 8314 5.1 (implicit TLS: submissions, imaps, pop3s).
SRV_SERVICES = (
    ("_submissions._tcp", "submissions"),
    ("_submission._tcp", "submission"),
    ("_imaps._tcp", "imaps"),
    ("_imap._tcp", "imap"),
    ("_pop3s._tcp", "pop3s"),
    ("_pop3._tcp", "pop3"),
)
# Endpoints whose certificate senders may pin with DANE: port 25 (RFC 7672) and submission.
TLSA_LISTENERS = ("mx", "submissions", "submission")


class PublishError(ValueError):
    """A file the records are derived from cannot be read; ``str()`` names the config key."""


@dataclass(frozen=True)
class Record:
    name: str  # owner name, fully qualified, no trailing dot
    type: str  # MX, A, AAAA, TXT, CNAME, SRV, TLSA, PTR
    value: str  # RDATA in zone-file form; for TXT the text itself, unquoted
    why: str  # one line for the operator

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def report_address(cfg: Config) -> str:
    return cfg.publish.report_address or cfg.box.postmaster_address


def box_addresses(cfg: Config) -> list[str]:
    """The box's public addresses: publish.addresses, else listener addresses that are global."""
    if cfg.publish.addresses:
        return list(cfg.publish.addresses)
    out: list[str] = []
    for name in ("mx", "submission", "submissions", "imap", "imaps", "pop3", "pop3s"):
        lst: Listener = getattr(cfg.listeners, name)
        ip = ipaddress.ip_address(lst.host)
        if lst.enabled and ip.is_global and str(ip) not in out:
            out.append(str(ip))
    return out


def dkim_value(cfg: Config) -> str:
    try:
        return dkim_txt_record(Path(cfg.dkim.key))
    except (OSError, ValueError, TypeError) as exc:
        raise PublishError(f"key dkim.key: {cfg.dkim.key}: cannot read the DKIM private key: {exc}") from None


def tlsa_value(cfg: Config) -> str:
    """TLSA 3 1 1 (RFC 7671 5.1, DANE-EE on the SubjectPublicKeyInfo, SHA-256) of the box's certificate."""
    try:
        cert = load_cert(cfg.tls.cert)
    except (OSError, ValueError) as exc:
        raise PublishError(f"key tls.cert: {cfg.tls.cert}: cannot read the certificate: {exc}") from None
    return f"3 1 1 {spki_sha256(cert)}"


def spf_value(cfg: Config) -> str:
    """SPF (RFC 7208) of the local domains: the MX hosts (this box), and the upstream on an edge box."""
    terms = ["v=spf1", "mx"]
    if cfg.box.role == "edge" and cfg.relay.upstream is not None:
        host = cfg.relay.upstream.host
        try:
            ip = ipaddress.ip_address(host)
            terms.append(f"ip{ip.version}:{ip}")
        except ValueError:
            terms.append(f"a:{host}")
    return " ".join(terms + ["-all"])


def _usable(lst: Listener) -> bool:
    # A listener without TLS is not offered to clients (a password would cross in the clear).
    return lst.enabled and lst.tls != "none"


def expected_records(cfg: Config) -> list[Record]:
    """The records, host records first, then per local domain. Raises PublishError on an unreadable key file."""
    host = cfg.box.hostname
    out: list[Record] = []
    addresses = box_addresses(cfg)
    for a in addresses:
        rtype = "A" if ipaddress.ip_address(a).version == 4 else "AAAA"
        out.append(Record(host, rtype, a, "the box's address: the target of every MX, SRV and CNAME below"))
    # RFC 7208 2.3: the HELO identity is checked too; only the box itself may use its name.
    out.append(Record(host, "TXT", "v=spf1 a -all", "SPF of the HELO name: only this host sends as itself"))
    tlsa = tlsa_value(cfg)
    for name in TLSA_LISTENERS:
        lst: Listener = getattr(cfg.listeners, name)
        if lst.enabled and lst.tls != "none":
            out.append(Record(f"_{lst.port}._tcp.{host}", "TLSA", tlsa,
                              f"DANE (RFC 7672) for {name}: the box's key; sign the zone with DNSSEC, "
                              "and publish the new key's record before a key change"))
    for a in addresses:
        out.append(Record(ipaddress.ip_address(a).reverse_pointer, "PTR", f"{host}.",
                          "reverse DNS = HELO name (receivers check it); set by whoever owns the address block"))

    dkim = dkim_value(cfg)
    signed = cfg.dkim_domains()
    report = report_address(cfg)
    for domain in cfg.box.domains:
        out.append(Record(domain, "MX", f"10 {host}.", "mail for this domain goes to the box"))
        out.append(Record(domain, "TXT", spf_value(cfg), "SPF: who may send mail from this domain (RFC 7208)"))
        if domain in signed:
            out.append(Record(f"{cfg.dkim.selector}._domainkey.{domain}", "TXT", dkim,
                              "DKIM public key of dkim.key: receivers verify the box's signatures (RFC 6376)"))
        out.append(Record(f"_dmarc.{domain}", "TXT", f"v=DMARC1; p={cfg.publish.dmarc_policy}; rua=mailto:{report}",
                          "DMARC policy for mail failing SPF and DKIM; aggregate reports to rua (RFC 7489)"))
        out.append(Record(f"_mta-sts.{domain}", "TXT", mtasts.txt_record(cfg),
                          "MTA-STS (RFC 8461): id changes with the policy served at mta-sts.DOMAIN"))
        out.append(Record(f"_smtp._tls.{domain}", "TXT", f"v=TLSRPTv1; rua=mailto:{report}",
                          "TLS-RPT (RFC 8460): senders report TLS failures to this address"))
        for label in WEB_NAMES:
            out.append(Record(f"{label}.{domain}", "CNAME", f"{host}.",
                              f"{label}: served by the console over HTTPS (its certificate must name it)"))
        for srv, listener in SRV_SERVICES:
            lst = getattr(cfg.listeners, listener)
            if _usable(lst):
                out.append(Record(f"{srv}.{domain}", "SRV", f"0 1 {lst.port} {host}.",
                                  f"RFC 6186 client discovery: {listener} on port {lst.port}"))
            else:
                # RFC 6186 4: a target of "." says the service is not offered at all.
                out.append(Record(f"{srv}.{domain}", "SRV", "0 0 0 .",
                                  f"RFC 6186: {listener} is not offered (disabled or without TLS)"))
        out.append(Record(f"_autodiscover._tcp.{domain}", "SRV", f"0 1 {HTTPS_PORT} {host}.",
                          "Outlook finds autodiscover.xml on the box (MS-OXDISCO, the DNS SRV lookup)"))
    return out


def _txt_rdata(text: str) -> str:
    """TXT RDATA: character-strings of at most 255 octets each (RFC 1035 3.3.14), quoted."""
    chunks = [text[i:i + 255] for i in range(0, len(text), 255)] or [""]
    return " ".join('"' + c.replace("\\", "\\\\").replace('"', '\\"') + '"' for c in chunks)


def zone_lines(records: list[Record], ttl: int = 3600) -> list[str]:
    """The records in zone-file form (RFC 1035 5.1), each after a comment saying why."""
    lines: list[str] = []
    for r in records:
        rdata = _txt_rdata(r.value) if r.type == "TXT" else r.value
        lines.append(f"; {r.why}")
        lines.append(f"{r.name}.\t{ttl}\tIN\t{r.type}\t{rdata}")
    return lines
