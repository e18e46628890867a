"""UID SEARCH UNSEEN from the index (issue 13): the same answer as the flags, within the session's view."""

from __future__ import annotations

import imaplib

from tests.access.conftest import imap, message
from tests.helpers.box import Box


def _unseen_by_fetch(m: imaplib.IMAP4) -> list[int]:
    """The UIDs without \\Seen, from FETCH 1:* (UID FLAGS): what the client can see for itself."""
    out = []
    for item in m.fetch("1:*", "(UID FLAGS)")[1]:
        assert isinstance(item, bytes)
        if b"UID " not in item:
            continue  # an unsolicited FETCH (FLAGS) that imaplib files with the answer
        uid = int(item.split(b"UID ")[1].split()[0].rstrip(b")"))
        if b"\\Seen" not in item:
            out.append(uid)
    return sorted(out)


def _uids(data: list[object]) -> list[int]:
    return [int(x) for x in data[0].split()] if data and data[0] else []  # type: ignore[union-attr]


def test_uid_search_unseen_agrees_with_the_flags_and_the_view(access_box: Box) -> None:
    a, b = imap(access_box, "carol"), imap(access_box, "carol", implicit=True)
    a.create("Unseen")
    for i in range(12):
        a.append("Unseen", "(\\Seen)" if i % 3 == 0 else None, None,
                 message("carol@example.test", "carol@example.test", f"u{i}"))
    a.select("Unseen")
    b.select("Unseen")
    unseen = _unseen_by_fetch(a)
    assert len(unseen) == 8
    assert _uids(a.uid("SEARCH", None, "UNSEEN")[1]) == unseen
    # Sequence numbers, ESEARCH, and a flag term combined with UNSEEN take the other path; same set.
    assert a.uid("SEARCH", "RETURN", "(COUNT MIN MAX)", "UNSEEN")[0] == "OK"
    esearch = a.response("ESEARCH")[1][-1]
    assert isinstance(esearch, bytes)
    for part in (b"UID", b"COUNT 8", b"MIN %d" % unseen[0], b"MAX %d" % unseen[-1]):
        assert part in esearch.split(b")", 1)[1], esearch
    assert _uids(a.uid("SEARCH", None, "UNSEEN", "UNDELETED")[1]) == unseen

    # Another session reads one, expunges one and a new unread message arrives.
    b.uid("STORE", str(unseen[0]), "+FLAGS", "(\\Seen)")
    b.uid("STORE", str(unseen[1]), "+FLAGS", "(\\Deleted)")
    b.expunge()
    b.append("Unseen", None, None, message("carol@example.test", "carol@example.test", "late"))
    a.untagged_responses.clear()
    found = _uids(a.uid("SEARCH", None, "UNSEEN")[1])
    new_uid = max(_uids(b.uid("SEARCH", None, "ALL")[1]))
    told = [int(n) for n in a.untagged_responses.get("EXISTS", [])]
    # The expunged message is gone from the answer, the one read elsewhere too; the new one may be
    # in it only if this session is told of it (an EXISTS, before or after the SEARCH line).
    assert unseen[0] not in found and unseen[1] not in found
    assert [u for u in found if u != new_uid] == unseen[2:]
    assert new_uid not in found or told
    a.noop()
    assert _uids(a.uid("SEARCH", None, "UNSEEN")[1]) == _unseen_by_fetch(a) == [*unseen[2:], new_uid]
    a.logout()
    b.logout()
