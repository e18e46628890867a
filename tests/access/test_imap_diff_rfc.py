"""The broad Dovecot differential: every command and extension, one script per area, box vs Dovecot.

The scripts are data (tests/access/diffscripts/*.imap, format in tests/access/imapscript.py):
adding a case is one line. Each area runs in an account of its own on both servers; the answers
are compared step by step after tests/access/imapdiff.py's `normalize_strict` (which removes
only what the RFCs leave to the server, never the structure of a response). A step that
differs is printed with both normalized answers and both raw answers. A server that stays
silent fails that step after imapscript.STEP_TIMEOUT seconds and ends its script (never a hang).

The private Dovecot runs with the extensions the box advertises (its defaults include them all
but QUOTA, which the quota plugin adds) and the box's folder set (INBOX, Sent, Drafts, Trash,
Junk, Outbox, subscribed, the special-use ones with their attribute).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.access.conftest import PASSWORD
from tests.access.dovecot import BOX_FOLDERS_CONF, Dovecot, start_dovecot
from tests.access.imapscript import HERE, Server, run_script
from tests.conftest import require
from tests.helpers.box import Box

AREAS = sorted(HERE.glob("*.imap"))

DIFF_DOVECOT_CONF = r"""
mail_plugins = $mail_plugins quota
protocol imap {
  mail_plugins = $mail_plugins imap_quota
}
plugin {
  quota = maildir:User quota
  quota_rule = *:storage=1G
  quota_rule2 = *:messages=100000
}
""" + BOX_FOLDERS_CONF


def _local(area: Path) -> str:
    return "diff" + area.stem.replace("_", "")


@pytest.fixture(scope="module")
def diff_users(access_box: Box) -> dict[str, str]:
    users = {a.stem: access_box.add_user(_local(a), PASSWORD) for a in AREAS}
    # The same limits as the reference's quota_rule (the values are normalized away, the resources not).
    # Not checked: a server without quotas (the old one) has no such command, and quota.imap then shows it.
    access_box.cli("user", "quota", users["quota"], "--storage", "1G", "--messages", "100000", check=False)
    return users


@pytest.fixture(scope="module")
def diff_dovecot(access_box: Box, diff_users: dict[str, str]) -> Iterator[Dovecot]:
    require("dovecot", "doveadm")
    dv = start_dovecot({u: PASSWORD for u in diff_users.values()}, access_box.cfg.tls.cert, access_box.cfg.tls.key,
                       extra_conf=DIFF_DOVECOT_CONF)
    yield dv
    dv.stop()


def _maildir_deliverer(root: Path, owner: int | None) -> object:
    counter = iter(range(1, 1_000_000))

    def deliver(mailbox: str, data: bytes) -> None:
        d = root if mailbox.upper() == "INBOX" else root / f".{mailbox}"
        name = f"{int(time.time())}.M{next(counter)}P{os.getpid()}.imapdiff"
        tmp = d / "tmp" / name
        tmp.write_bytes(data)
        if owner is not None:
            os.chown(tmp, owner, owner)
        os.rename(tmp, d / "new" / name)  # as the relay delivers: tmp/ then new/

    return deliver


def _show(raw: bytes) -> str:
    text = raw.decode("utf-8", "backslashreplace")
    return text if len(text) < 1500 else text[:1500] + f"... ({len(text)} characters)"


@pytest.mark.parametrize("area", AREAS, ids=lambda a: a.stem)
def test_area_same_answers_as_dovecot(area: Path, access_box: Box, diff_users: dict[str, str],
                                      diff_dovecot: Dovecot) -> None:
    user = diff_users[area.stem]
    tls = access_box.client_tls()
    theirs = run_script(area, Server("127.0.0.1", diff_dovecot.imap_port, tls, user, PASSWORD,
                                     _maildir_deliverer(diff_dovecot.maildir(user), 65534)))  # type: ignore[arg-type]
    ours = run_script(area, Server(access_box.host("imap"), access_box.port("imap"), tls, user, PASSWORD,
                                   _maildir_deliverer(access_box.maildir(user), None)))  # type: ignore[arg-type]
    diffs = []
    for i, (step, norm, raw) in enumerate(theirs):
        if i >= len(ours):
            diffs.append(f"{area.name}:{step.line} {step.session} {step.text}\n  box: (not run: an earlier step ended "
                         f"the script)\n  dovecot: {norm!r}")
            continue
        _, onorm, oraw = ours[i]
        if onorm != norm:
            diffs.append(f"{area.name}:{step.line} {step.session} {step.text}\n  box:     {onorm!r}\n"
                         f"  dovecot: {norm!r}\n  box raw:\n    {_show(oraw)}\n  dovecot raw:\n    {_show(raw)}")
    assert len(theirs) == len(ours) or diffs, "the two runs have different lengths"
    assert not diffs, (f"{len(diffs)} of {len(theirs)} steps differ from Dovecot:\n\n" + "\n\n".join(diffs))


def test_reference_dovecot_advertises_what_the_scripts_exercise(access_box: Box, diff_users: dict[str, str],
                                                               diff_dovecot: Dovecot) -> None:
    """The reference really has every extension on (else a script would compare two refusals)."""
    from tests.access.imapdiff import COMPARED_CAPABILITIES, RawIMAP

    c = RawIMAP("127.0.0.1", diff_dovecot.imap_port, access_box.client_tls())
    user = next(iter(diff_users.values()))
    assert c.command(b'LOGIN "%s" "%s"' % (user.encode(), PASSWORD.encode()))[1].startswith(b"OK")
    untagged, _ = c.command(b"CAPABILITY")
    c.close()
    caps = set(untagged[0].upper().split()[2:])
    missing = COMPARED_CAPABILITIES - caps - {b"STARTTLS", b"LOGINDISABLED", b"AUTH=PLAIN", b"SASL-IR"}
    assert not missing, f"the reference Dovecot lacks {sorted(missing)}"
