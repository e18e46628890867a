"""Client autoconfig: Thunderbird's config-v1.1.xml, Outlook's POX Autodiscover and an Apple profile.

The console serves these (docs/doctor.md says where); they only describe listeners that are enabled
and have TLS, in the order a client should prefer them: implicit TLS first (RFC 8314 3.3).
The login is always the full address (appliance/accounts.py: an account's address is its login).
"""

from __future__ import annotations

import plistlib
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from xml.sax.saxutils import escape

from appliance.config import Config, Listener

MAX_REQUEST = 16 * 1024  # an Autodiscover request is a few hundred bytes; refuse anything larger
AUTODISCOVER_REQUEST_NS = "http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006"
AUTODISCOVER_RESPONSE_NS = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
OUTLOOK_RESPONSE_NS = "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"


@dataclass(frozen=True)
class Server:
    protocol: str  # imap, pop3, smtp
    host: str
    port: int
    implicit_tls: bool  # False: STARTTLS


def servers(cfg: Config) -> list[Server]:
    """Usable servers, preferred first: IMAP before POP3, implicit TLS before STARTTLS."""
    out = []
    for name, proto in (("imaps", "imap"), ("imap", "imap"), ("pop3s", "pop3"), ("pop3", "pop3"),
                        ("submissions", "smtp"), ("submission", "smtp")):
        lst: Listener = getattr(cfg.listeners, name)
        # A listener without TLS is never offered: the client would send its password in the clear.
        if lst.enabled and lst.tls != "none":
            out.append(Server(proto, cfg.box.hostname, lst.port, lst.tls == "implicit"))
    return out


def _check_address(email: str) -> tuple[str, str]:
    local, at, domain = email.strip().rpartition("@")
    if not at or not local or not domain or len(email) > 254 or any(c.isspace() or ord(c) < 32 for c in email):
        raise ValueError(f"not an email address: {email[:80]!r}")
    return local, domain.lower().rstrip(".")


def _local_domain(cfg: Config, email: str) -> str:
    """The local domain EMAIL (an address, a bare domain or "") belongs to; ValueError for any other."""
    if not email:
        return cfg.box.domains[0]
    domain = _check_address(email)[1] if "@" in email else email.strip().lower().rstrip(".")
    if domain not in cfg.box.domains:
        raise ValueError(f"{domain!r} is not a mail domain of this box")
    return domain


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrib: str) -> ET.Element:
    e = ET.SubElement(parent, tag, attrib)
    if text is not None:
        e.text = text
    return e


def _xml(root: ET.Element) -> bytes:
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def thunderbird_xml(cfg: Config, email: str) -> bytes:
    """config-v1.1.xml in Thunderbird's documented format (wiki.mozilla.org/Thunderbird:Autoconfiguration:
    ConfigFileFormat). EMAIL may be "" (Thunderbird's query parameter is optional): the first domain.
    The username is Thunderbird's placeholder %EMAILADDRESS%, so one file serves every customer."""
    domain = _local_domain(cfg, email)
    root = ET.Element("clientConfig", version="1.1")
    provider = _sub(root, "emailProvider", id=domain)
    for d in cfg.box.domains:
        _sub(provider, "domain", d)
    _sub(provider, "displayName", f"{domain} mail ({cfg.box.hostname})")
    _sub(provider, "displayShortName", domain)
    for s in servers(cfg):
        tag, kind = ("outgoingServer", "smtp") if s.protocol == "smtp" else ("incomingServer", s.protocol)
        srv = _sub(provider, tag, type=kind)
        _sub(srv, "hostname", s.host)
        _sub(srv, "port", str(s.port))
        _sub(srv, "socketType", "SSL" if s.implicit_tls else "STARTTLS")
        _sub(srv, "username", "%EMAILADDRESS%")
        _sub(srv, "authentication", "password-cleartext")
    return _xml(root)


def autodiscover_email(request_body: bytes) -> str:
    """The EMailAddress of a POX Autodiscover request (MS-OXDSCLI 2.2.3); ValueError if it is not one."""
    if len(request_body) > MAX_REQUEST:
        raise ValueError(f"request larger than {MAX_REQUEST} bytes")
    # No request has a DTD; refusing one rules out entity tricks before expat sees them.
    if b"<!doctype" in request_body.lower():
        raise ValueError("a DOCTYPE is not allowed in an Autodiscover request")
    try:
        root = ET.fromstring(request_body)
    except ET.ParseError as exc:
        raise ValueError(f"not XML: {exc}") from None
    ns = {"a": AUTODISCOVER_REQUEST_NS}
    if root.tag != f"{{{AUTODISCOVER_REQUEST_NS}}}Autodiscover":
        raise ValueError("not an Outlook Autodiscover request (root element Autodiscover of the 2006 request schema)")
    email = root.findtext("a:Request/a:EMailAddress", namespaces=ns)
    schema = root.findtext("a:Request/a:AcceptableResponseSchema", namespaces=ns)
    if not email:
        raise ValueError("the request has no Request/EMailAddress")
    if schema is not None and schema.strip() != OUTLOOK_RESPONSE_NS:
        raise ValueError(f"response schema {schema.strip()[:100]!r} is not offered (only {OUTLOOK_RESPONSE_NS})")
    return email.strip()


def autodiscover_xml(cfg: Config, request_body: bytes) -> bytes:
    """The POX response (MS-OXDSCLI 2.2.4) to REQUEST_BODY: one Protocol element per usable server.
    Raises ValueError on a malformed request or an address outside the local domains."""
    email = autodiscover_email(request_body)
    _check_address(email)
    _local_domain(cfg, email)
    # Written as text, not through ElementTree: Outlook expects the Response schema as the default
    # namespace of <Response> (as in MS-OXDSCLI 4.2), which ElementTree would turn into a prefix.
    protocols = []
    seen: set[str] = set()
    for s in servers(cfg):
        kind = s.protocol.upper()
        if kind in seen:
            continue  # one Protocol per type, the preferred one: Outlook uses the first it finds
        seen.add(kind)
        # Encryption (SSL = implicit TLS, TLS = STARTTLS; MS-OXDSCLI 2.2.4.1.1.2.1) takes precedence
        # over SSL where Outlook knows it; SSL=on is for older versions.
        protocols.append(
            "<Protocol>"
            f"<Type>{kind}</Type><Server>{escape(s.host)}</Server><Port>{s.port}</Port>"
            f"<LoginName>{escape(email)}</LoginName><DomainRequired>off</DomainRequired><SPA>off</SPA>"
            f"<SSL>on</SSL><Encryption>{'SSL' if s.implicit_tls else 'TLS'}</Encryption>"
            "<AuthRequired>on</AuthRequired></Protocol>")
    text = (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        f'<Autodiscover xmlns="{AUTODISCOVER_RESPONSE_NS}">'
        f'<Response xmlns="{OUTLOOK_RESPONSE_NS}">'
        f"<User><DisplayName>{escape(email)}</DisplayName></User>"
        "<Account><AccountType>email</AccountType><Action>settings</Action>"
        + "".join(protocols)
        + "</Account></Response></Autodiscover>\n"
    )
    return text.encode("utf-8")


def _uuid(cfg: Config, *parts: str) -> str:
    # Stable per box and address: installing a newer profile replaces the old one instead of adding a copy.
    return str(uuid.uuid5(uuid.NAMESPACE_DNS, "/".join((cfg.box.hostname, *parts)))).upper()


def mobileconfig(cfg: Config, email: str) -> bytes:
    """An unsigned Apple configuration profile with one com.apple.mail.managed payload for EMAIL
    (keys per Apple's Configuration Profile Reference, "Mail"). The password is not in it: the device
    asks for it when the profile is installed. ValueError if EMAIL is not an address of a local domain."""
    local, domain = _check_address(email)
    _local_domain(cfg, email)
    address = f"{local}@{domain}"
    incoming = next((s for s in servers(cfg) if s.protocol == "imap"), None) or next(
        (s for s in servers(cfg) if s.protocol == "pop3"), None)
    outgoing = next((s for s in servers(cfg) if s.protocol == "smtp"), None)
    if incoming is None or outgoing is None:
        raise ValueError("the box has no TLS listener for IMAP/POP3 or for submission")
    ident = ".".join(reversed(cfg.box.hostname.split(".")))
    mail = {
        "PayloadType": "com.apple.mail.managed",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{ident}.mail.{_uuid(cfg, address, 'mail')}",
        "PayloadUUID": _uuid(cfg, address, "mail"),
        "PayloadDisplayName": f"Mail {address}",
        "EmailAccountDescription": address,
        "EmailAccountType": "EmailTypeIMAP" if incoming.protocol == "imap" else "EmailTypePOP",
        "EmailAddress": address,
        "IncomingMailServerHostName": incoming.host,
        "IncomingMailServerPortNumber": incoming.port,
        "IncomingMailServerUseSSL": True,
        "IncomingMailServerAuthentication": "EmailAuthPassword",
        "IncomingMailServerUsername": address,
        "OutgoingMailServerHostName": outgoing.host,
        "OutgoingMailServerPortNumber": outgoing.port,
        "OutgoingMailServerUseSSL": True,
        "OutgoingMailServerAuthentication": "EmailAuthPassword",
        "OutgoingMailServerUsername": address,
        "OutgoingPasswordSameAsIncomingPassword": True,
    }
    profile = {
        "PayloadType": "Configuration",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{ident}.profile.{_uuid(cfg, address)}",
        "PayloadUUID": _uuid(cfg, address),
        "PayloadDisplayName": f"{domain} mail",
        "PayloadDescription": f"Mail account {address} on {cfg.box.hostname}",
        "PayloadOrganization": domain,
        "PayloadContent": [mail],
    }
    return plistlib.dumps(profile, fmt=plistlib.FMT_XML)
