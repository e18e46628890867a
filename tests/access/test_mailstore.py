"""The Maildir store: UIDs, UIDVALIDITY, flags and keywords survive a restart (a new process's view)."""

from __future__ import annotations

import os
from pathlib import Path

from appliance.mailstore import Mailstore
from appliance.mailstore import store as store_mod
from appliance.mailstore.folder import Folder


def _fresh_view(path: Path, name: str = "INBOX") -> Folder:
    """What a restarted access service sees: no in-process cache."""
    return Folder(path, name)


def _deliver(maildir: Path, name: str, data: bytes) -> None:
    """Deliver the way the relay does: tmp/ then rename into new/."""
    (maildir / "tmp" / name).write_bytes(data)
    os.rename(maildir / "tmp" / name, maildir / "new" / name)


def test_folders_created_with_special_uses_and_outbox(tmp_path: Path) -> None:
    ms = Mailstore(tmp_path / "alice", ["Sent", "Drafts", "Trash", "Junk"], "Outbox")
    ms.ensure()
    assert ms.names() == ["INBOX", "Drafts", "Junk", "Outbox", "Sent", "Trash"]
    assert "\\Sent" in ms.attributes("Sent") and "\\Junk" in ms.attributes("Junk")
    assert ms.subscriptions() >= {"INBOX", "Sent", "Outbox"}
    assert all((tmp_path / "alice" / ".Outbox" / sub).is_dir() for sub in ("tmp", "new", "cur"))


def test_uids_flags_keywords_persist_and_are_never_reused(tmp_path: Path) -> None:
    root = tmp_path / "bob"
    ms = Mailstore(root, [], "")
    ms.ensure()
    _deliver(root, "1.a.host", b"Subject: one\n\nbody\n")
    _deliver(root, "2.b.host", b"Subject: two\n\nbody\n")
    f = _fresh_view(root)
    assert f.uids() == [1, 2]
    validity = f.uidvalidity
    u3 = f.add(b"Subject: three\r\n\r\nx\r\n", ["\\Seen", "$Label1"])
    f.set_flags(1, ["\\Flagged", "$SubmitPending"])
    f.expunge([2])
    _deliver(root, "4.c.host", b"Subject: four\n\nbody\n")

    again = _fresh_view(root)
    assert again.uidvalidity == validity
    assert again.uids() == [1, u3, u3 + 1]  # 2 is gone and never handed out again
    assert again.entries[1].flags() == ["\\Flagged", "$SubmitPending"]
    assert again.entries[u3].flags() == ["\\Seen", "$Label1"]
    # Standard flags are in the Maildir file name, readable by any Maildir tool.
    assert any(n.endswith(":2,F") for n in os.listdir(root / "cur"))
    # Sizes are of the CRLF form IMAP and POP send.
    assert again.entries[1].size == len(b"Subject: one\r\n\r\nbody\r\n")


def test_unreadable_uid_list_gets_a_new_uidvalidity(tmp_path: Path) -> None:
    root = tmp_path / "carol"
    Mailstore(root, [], "").ensure()
    _deliver(root, "1.a.host", b"Subject: one\n\nx\n")
    before = _fresh_view(root).uidvalidity
    (root / "appliance-uidlist").write_text("garbage\n")
    store_mod._folders.clear()
    after = _fresh_view(root)
    assert after.uidvalidity != before  # clients must drop their caches (RFC 3501 2.3.1.1)
    assert after.uids() == [1]


def test_uids_survive_a_lost_list_append(tmp_path: Path) -> None:
    """The list is not fsynced per APPEND; the UID in the file name is the durable copy."""
    root = tmp_path / "dave"
    Mailstore(root, [], "").ensure()
    f = _fresh_view(root)
    uids = [f.add(b"Subject: %d\r\n\r\nx\r\n" % i) for i in range(3)]
    _deliver(root, "9.z.host", b"Subject: delivered\n\nx\n")
    f.sync()
    uids.append(max(f.uids()))
    validity = f.uidvalidity
    # A crash that kept the files but lost the list's appended records.
    lines = (root / "appliance-uidlist").read_text().splitlines()
    (root / "appliance-uidlist").write_text(lines[0] + "\n")
    store_mod._folders.clear()
    again = _fresh_view(root)
    assert again.uidvalidity == validity and again.uids() == uids
    assert again.add(b"Subject: next\r\n\r\nx\r\n") == uids[-1] + 1  # never reused
