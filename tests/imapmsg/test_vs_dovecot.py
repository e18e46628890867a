"""Differential: ENVELOPE, BODY, BODYSTRUCTURE, BODY[...] and BINARY[...] against a private Dovecot.

Every message in corpus/ is APPENDed to Dovecot (the reference server, tests/access/dovecot.py)
and every item is compared byte for byte with services.access.imapmsg's answer.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.access.imapmsg import Message, mimetree
from services.access.imapproto.types import Section
from tests.imapmsg.dovecot_ref import Session, dovecot

CORPUS = Path(__file__).parent / "corpus"
MESSAGES = sorted(p.name for p in CORPUS.glob("*.eml"))


# Items where Dovecot 2.3.19 contradicts itself, so no byte-identical answer exists: its
# BINARY.SIZE differs from the length of the BINARY[] it returns for the same part (RFC 3516
# §4.2 defines BINARY.SIZE as that length). We answer with the length of our BINARY[], which
# equals Dovecot's BINARY[] (compared above); test_sections.py checks the consistency.
DOVECOT_SELF_CONTRADICTIONS = {
    ("17-nested-rfc822-alternative.eml", "BINARY.SIZE[2]"),  # message/rfc822 part: 4 octets short
    ("28-unknown-cte.eml", "BINARY.SIZE[2]"),  # 8bit part: NO [UNKNOWN-CTE] (part 1 is x-uuencode)
    ("28-unknown-cte.eml", "BINARY.SIZE[3]"),  # binary part: likewise
}


def wire_value(raw: bytes) -> bytes | None:
    """A FETCH value as Dovecot wrote it (literal, literal8, quoted or NIL) -> its content."""
    if raw == b"NIL":
        return None
    if raw.startswith(b"~"):
        raw = raw[1:]
    if raw.startswith(b"{"):
        head, _, rest = raw.partition(b"}\r\n")
        n = int(head[1:])
        assert len(rest) == n, (n, rest)
        return rest
    assert raw.startswith(b'"') and raw.endswith(b'"'), raw
    return raw[1:-1].replace(b'\\"', b'"').replace(b"\\\\", b"\\")


def part_paths(root: mimetree.Part, prefix: tuple[int, ...] = ()) -> Iterator[tuple[tuple[int, ...], mimetree.Part]]:
    """Every part number the message has (RFC 9051 §6.4.5) with the part it names."""
    if root.multipart:
        for i, child in enumerate(root.children, 1):
            yield prefix + (i,), child
            if child.multipart:
                yield from part_paths(child, prefix + (i,))
            elif child.message is not None:
                yield from part_paths(child.message, prefix + (i,))
    else:
        yield prefix + (1,), root
        if root.message is not None and not prefix:
            yield from part_paths(root.message, (1,))


def spec(path: tuple[int, ...]) -> str:
    return ".".join(map(str, path))


def items_for(msg: Message) -> list[tuple[str, Section | None, str]]:
    """(fetch item, section, kind) to compare for one message."""
    out: list[tuple[str, Section | None, str]] = [
        ("BODY[]", Section(), "body"), ("BODY[HEADER]", Section(text="HEADER"), "body"),
        ("BODY[TEXT]", Section(text="TEXT"), "body"),
        ("BODY[HEADER.FIELDS (SUBJECT to X-Custom Received)]",
         Section(text="HEADER.FIELDS", fields=("SUBJECT", "to", "X-Custom", "Received")), "body"),
        ("BODY[HEADER.FIELDS.NOT (Subject To)]", Section(text="HEADER.FIELDS.NOT", fields=("Subject", "To")), "body"),
        ("BODY[HEADER.FIELDS (NOSUCH)]", Section(text="HEADER.FIELDS", fields=("NOSUCH",)), "body"),
        ("BODY[9]", Section(part=(9,)), "body"),
        ("BINARY[]", Section(), "binary"),
    ]
    for path, part in part_paths(msg.tree):
        s = spec(path)
        out += [(f"BODY[{s}]", Section(part=path), "body"), (f"BODY[{s}.MIME]", Section(part=path, text="MIME"), "body")]
        if part.message is not None:
            out += [(f"BODY[{s}.HEADER]", Section(part=path, text="HEADER"), "body"),
                    (f"BODY[{s}.TEXT]", Section(part=path, text="TEXT"), "body"),
                    (f"BODY[{s}.HEADER.FIELDS (From)]", Section(part=path, text="HEADER.FIELDS", fields=("From",)),
                     "body")]
        if not part.multipart and part.message is None:
            out.append((f"BODY[{s}.1]", Section(part=(*path, 1)), "body"))  # no such part: empty
        if not part.multipart:
            out += [(f"BINARY[{s}]", Section(part=path), "binary"), (f"BINARY.SIZE[{s}]", Section(part=path), "size")]
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Session, dict[str, int]]]:
    with dovecot(tmp_path_factory.mktemp("dovecot-ref")) as dv:
        s = Session(dv)
        uids = {name: s.append((CORPUS / name).read_bytes()) for name in MESSAGES}
        yield s, uids
        s.close()


def test_corpus_is_big_enough() -> None:
    assert len(MESSAGES) >= 30


@pytest.mark.parametrize("name", MESSAGES)
def test_same_as_dovecot(reference: tuple[Session, dict[str, int]], name: str) -> None:
    s, uids = reference
    uid = uids[name]
    msg = Message((CORPUS / name).read_bytes())
    diffs = []
    for item, mine in (("ENVELOPE", msg.envelope()), ("BODYSTRUCTURE", msg.bodystructure(True)),
                       ("BODY", msg.bodystructure(False))):
        theirs = s.fetch(uid, item)
        if theirs != mine:
            diffs.append(f"{item}\n  dovecot: {theirs!r}\n  ours:    {mine!r}")
    for item, sec, kind in items_for(msg):
        assert sec is not None
        if (name, item) in DOVECOT_SELF_CONTRADICTIONS:
            continue
        untagged, status = s.imap.command(b"UID FETCH %d (%s)" % (uid, item.replace("BODY[", "BODY.PEEK[").replace(
            "BINARY[", "BINARY.PEEK[").encode()))
        if not status.startswith(b"OK"):
            theirs_status = status.split(b" ")[0] + (b" [UNKNOWN-CTE]" if b"UNKNOWN-CTE" in status else b"")
            ours_status = b"NO [UNKNOWN-CTE]" if kind != "body" and msg.binary(sec) is None else b"OK"
            if theirs_status != ours_status:
                diffs.append(f"{item}: dovecot {status!r}, ours {ours_status!r}")
            continue
        theirs_raw = s.fetch_value(untagged)
        if kind == "size":
            ours_size = msg.binary_size(sec)
            if theirs_raw != b"%d" % (ours_size or 0):
                diffs.append(f"{item}: dovecot {theirs_raw!r}, ours {ours_size!r}")
            continue
        theirs_val = wire_value(theirs_raw)
        mine_val = msg.section(sec) if kind == "body" else msg.binary(sec)
        if (theirs_val or b"") != (mine_val or b""):
            diffs.append(f"{item}\n  dovecot: {theirs_val!r}\n  ours:    {mine_val!r}")
    assert not diffs, "\n".join(diffs)
