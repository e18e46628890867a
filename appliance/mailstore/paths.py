"""Where an account's Maildir lives: ``MAIL_DIR/<domain>/<escaped local part>/`` (issue 21 item 1).

The old mapping used the local part as a path as it was, so the account
``alice/.Sent@example.test`` (``/`` is a legal atom character, RFC 5322 §3.2.3)
had the Maildir ``example.test/alice/.Sent``: alice's Sent folder. The escaping
here is one-to-one and never produces a "/", so every account's directory is
exactly two levels below MAIL_DIR and none can lie inside another's:

* the address is normalised first (appliance.addresses: lower case, no quoted
  local parts, no NUL/CR/LF, no "%"), so case cannot create two directories;
* every character outside ``[a-z0-9!#$&'*+=?^_`{|}~.-]`` becomes ``%XX`` (the
  UTF-8 octets in upper-case hex), "%" included, which addresses never contain;
* a leading "." becomes ``%2E`` (no hidden directory, no "." or "..");
* the domain is a validated host name (letters, digits, "-", ".").

Ordinary addresses map exactly as before, so nothing moves for them.
``account_maildir`` also moves a box from its old location the first time,
when that location was the account's own and not another account's folder.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

from appliance.addresses import normalize_address

log = logging.getLogger("appliance.mailstore.paths")
_SAFE = frozenset("abcdefghijklmnopqrstuvwxyz0123456789!#$&'*+=?^_`{|}~.-")


def escape_local(local: str) -> str:
    out = []
    for i, c in enumerate(local):
        if c in _SAFE and not (i == 0 and c == "."):
            out.append(c)
        else:
            out.extend(f"%{b:02X}" for b in c.encode())
    return "".join(out)


def maildir_path(mail_dir: str | Path, address: str) -> Path:
    """The Maildir of ADDRESS (an account's primary address); AddressError for a malformed one."""
    local, domain = normalize_address(address).rsplit("@", 1)
    return Path(mail_dir) / domain / escape_local(local)


def _old_path(mail_dir: str | Path, address: str) -> Path:
    local, domain = address.split("@", 1)
    return Path(mail_dir) / domain / local


def account_maildir(mail_dir: str | Path, address: str) -> Path:
    """``maildir_path``, after moving the box from where the old mapping put it (once)."""
    new = maildir_path(mail_dir, address)
    if new.exists():
        return new
    old = _old_path(mail_dir, normalize_address(address))
    if old == new or not (old / "cur").is_dir():
        return new
    # A Maildir++ folder (".Name") inside an existing Maildir belongs to that Maildir's owner:
    # the old mapping let this account write into it, but it is not this account's to take.
    if old.name.startswith(".") and (old.parent / "cur").is_dir():
        log.warning("not migrating %s for %s: it is a folder of the Maildir %s", old, address, old.parent)
        return new
    new.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(old, new)
        log.info("moved the Maildir of %s from %s to %s", address, old, new)
    except FileNotFoundError:
        pass  # another process moved it first
    return new


def overlapping(mail_dir: str | Path, addresses: Iterable[str]) -> list[tuple[str, str]]:
    """Pairs of addresses whose Maildirs are equal or nested (always empty for maildir_path; a check)."""
    paths = sorted((maildir_path(mail_dir, a).parts, a) for a in addresses)
    bad = []
    for (p1, a1), (p2, a2) in zip(paths, paths[1:], strict=False):
        if p2[:len(p1)] == p1:
            bad.append((a1, a2))
    return bad
