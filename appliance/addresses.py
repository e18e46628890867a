"""Mail addresses as the box accepts them.

The box is stricter than RFC 5321 on purpose: it refuses the forms that have
historically been used to trick relays into relaying (``%`` hacks, UUCP ``!``
paths, source routes, quoted local parts) and anything holding CR, LF or NUL.
"""

from __future__ import annotations

import re

# RFC 5321 4.5.3.1: local part at most 64 octets, path at most 256.
_MAX_LOCAL = 64
_MAX_ADDRESS = 254
_ATOM = re.compile(r"^[A-Za-z0-9!#$&'*+/=?^_`{|}~.-]+$")
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class AddressError(ValueError):
    """An address the box refuses; the message says why (safe to show a client)."""


def normalize_address(address: str) -> str:
    """Return ADDRESS lower-cased, or raise AddressError with the reason."""
    if any(c in address for c in "\r\n\0"):
        raise AddressError("address contains CR, LF or NUL")
    a = address.strip()
    if a.startswith("<") and a.endswith(">"):
        a = a[1:-1]
    if not a:
        raise AddressError("empty address")
    if a.startswith("@") or ":" in a:
        raise AddressError("source routes are not accepted")
    if '"' in a or "\\" in a:
        raise AddressError("quoted local parts are not accepted")
    if a.count("@") != 1:
        raise AddressError("address must have exactly one @")
    local, domain = a.rsplit("@", 1)
    if "%" in local or "!" in local:
        raise AddressError("% and ! routing in the local part are not accepted")
    if not local or len(local) > _MAX_LOCAL or not _ATOM.match(local) or local.startswith(".") or local.endswith(".") or ".." in local:
        raise AddressError("malformed local part")
    domain = domain.lower().rstrip(".")
    labels = domain.split(".")
    if len(labels) < 2 or not all(_LABEL.match(lbl) for lbl in labels):
        raise AddressError("malformed domain")
    result = f"{local.lower()}@{domain}"
    if len(result) > _MAX_ADDRESS:
        raise AddressError("address too long")
    return result


def domain_of(address: str) -> str:
    return address.rsplit("@", 1)[-1].lower()
