"""What a box trusts now: the earliest expiry of the metadata in ngclient's trusted cache.

The relay checks this at every connection (services/relay/registry_watch.py), so
it must be cheap to hold: it reads the four top-level roles' ``signed.expires``
with the standard library instead of loading python-tuf (and with it
securesystemslib and urllib3) into the relay for good. ngclient writes a role
into ``REGISTRY_DIR/tuf/`` only after verifying it (signatures, threshold,
version, expiry), so no check is skipped here: any file that is missing, not
JSON, not the role it is named after, or without a well-formed expiry raises,
and the relay then refuses members (fail closed).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

ROLES = ("root", "timestamp", "snapshot", "targets")
# The TUF specification's date-time format for "expires" (section 4.2, "ISO 8601, UTC, ending in Z"),
# the one python-tuf parses and writes.
EXPIRES_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def role_expiry(path: Path, role: str) -> dt.datetime:
    """``signed.expires`` of the ROLE metadata at PATH; ValueError (or OSError) when it cannot be trusted."""
    data = json.loads(path.read_bytes())
    signed = data.get("signed") if isinstance(data, dict) else None
    if not isinstance(signed, dict) or signed.get("_type") != role:
        raise ValueError(f"{path}: not {role} metadata")
    expires = signed.get("expires")
    if not isinstance(expires, str):
        raise ValueError(f"{path}: no expires date")
    return dt.datetime.strptime(expires, EXPIRES_FORMAT).replace(tzinfo=dt.UTC)


def trusted_expiry(cache: Path) -> dt.datetime:
    """Earliest expiry among the top-level metadata ngclient trusts now."""
    return min(role_expiry(cache / f"{role}.json", role) for role in ROLES)
