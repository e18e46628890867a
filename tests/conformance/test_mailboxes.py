"""Mailbox commands: names, LIST/LSUB, SUBSCRIBE, STATUS, UIDVALIDITY/UIDNEXT, LIST-EXTENDED/STATUS."""

from __future__ import annotations

import re

import pytest

from tests.conformance.client import Conn, Lit, parse
from tests.conformance.conftest import Server, dovecot_deviates


def listed(c: Conn, cmd: str) -> dict[bytes, list[bytes]]:
    """name -> attributes of the LIST/LSUB responses."""
    r = c.ok(cmd)
    out: dict[bytes, list[bytes]] = {}
    for line in r.lines("LIST") + r.lines("LSUB"):
        tok = parse(line)
        out[tok[4]] = [a.lower() for a in tok[2]]
    return out


def status(c: Conn, box: str, items: str) -> dict[bytes, int]:
    r = c.ok(f"STATUS {box} ({items})")
    (line,) = r.lines("STATUS")
    tok = parse(line)
    vals = tok[3]
    return {vals[i].upper(): int(vals[i + 1]) for i in range(0, len(vals), 2)}


@pytest.mark.parametrize("name", ["a#b", "x&-y", "bang!", "plus+1", "tilde~", "dollar$", "quote'd", "Gr&APw-n",
                                  "&ZeVnLIqe-", "sp ace"])
def test_atom_character_names(server: Server, name: str) -> None:
    """RFC 3501 §5.1 / §9 (atom, ATOM-CHAR) and §5.1.3 (modified UTF-7): legal names are created, listed
    back in the same octets, selected and deleted."""
    _, c = server.session()
    wire = f'"{name}"' if " " in name else name
    c.ok(f"CREATE {wire}")
    got = listed(c, f"LIST \"\" {wire}")
    assert list(got) == [name.encode()], got
    c.ok(f"SELECT {wire}")
    c.ok("CLOSE")
    c.ok(f"DELETE {wire}")
    assert listed(c, f"LIST \"\" {wire}") == {}


def test_bad_mutf7_name_is_refused(server: Server) -> None:
    """RFC 3501 §5.1.3: "&" must start a modified-BASE64 run or be "&-"; a bad run is refused (NO or BAD),
    the session goes on."""
    _, c = server.session()
    r = c.cmd("CREATE &Jjo!")
    assert r.status in ("NO", "BAD")
    c.ok("NOOP")


def test_create_existing_and_inbox(server: Server) -> None:
    """RFC 3501 §6.3.3: CREATE of an existing name (INBOX in any case) is NO."""
    _, c = server.session()
    c.ok("CREATE Box1")
    assert c.cmd("CREATE Box1").status == "NO"
    assert c.cmd("CREATE inbox").status == "NO"


def test_create_with_trailing_delimiter(server: Server) -> None:
    """RFC 3501 §6.3.3: CREATE "foo." (trailing delimiter) creates foo, declaring it may have children."""
    _, c = server.session()
    c.ok("CREATE Parent.")
    assert b"Parent" in listed(c, 'LIST "" Parent')


def test_list_wildcards(server: Server) -> None:
    """RFC 3501 §6.3.8: "*" matches the delimiter, "%" does not; LIST "" "" returns the delimiter."""
    _, c = server.session()
    c.ok("CREATE Top")
    c.ok("CREATE Top.Mid")
    c.ok("CREATE Top.Mid.Low")
    star = listed(c, 'LIST "" Top*')
    assert set(star) == {b"Top", b"Top.Mid", b"Top.Mid.Low"}
    pct = listed(c, 'LIST "" Top.%')
    assert set(pct) == {b"Top.Mid"}
    r = c.ok('LIST "" ""')
    tok = parse(r.lines("LIST")[0])
    assert tok[3] == b"." and tok[4] == b"" and b"\\noselect" in [a.lower() for a in tok[2]]
    ref = listed(c, "LIST Top. %")
    assert set(ref) == {b"Top.Mid"}


def test_children_attributes(server: Server) -> None:
    """RFC 3348 §4 / RFC 9051 §7.3.1: \\HasChildren on a mailbox with children, \\HasNoChildren otherwise."""
    _, c = server.session()
    c.ok("CREATE P")
    c.ok("CREATE P.Q")
    got = listed(c, 'LIST "" P*')
    assert b"\\haschildren" in got[b"P"]
    assert b"\\hasnochildren" in got[b"P.Q"]


def test_delete_parent_leaves_noselect(server: Server) -> None:
    """RFC 3501 §6.3.4: deleting a mailbox with inferiors removes it as a mailbox; the name stays as
    \\Noselect (or the DELETE is refused); the children stay."""
    _, c = server.session()
    c.ok("CREATE Par.Kid")
    r = c.cmd("DELETE Par")
    got = listed(c, 'LIST "" Par*')
    assert b"Par.Kid" in got
    if r.status == "OK" and b"Par" in got:
        assert b"\\noselect" in got[b"Par"] or b"\\nonexistent" in got[b"Par"]


def test_percent_lists_noselect_parent(server: Server) -> None:
    """RFC 3501 §6.3.8: "%" lists a level whose only mailboxes are deeper as \\Noselect (a server that has
    no such implicit parent returns it with \\Noselect or \\NonExistent)."""
    _, c = server.session()
    c.ok("CREATE Only.Deep")
    got = listed(c, 'LIST "" Only')
    if b"Only" in got:
        assert {b"\\noselect", b"\\nonexistent"} & set(got[b"Only"]) or b"\\haschildren" in got[b"Only"]
    pct = listed(c, 'LIST "" %')
    assert b"Only" in pct


def test_subscribe_lsub(server: Server) -> None:
    """RFC 3501 §6.3.6/§6.3.9: SUBSCRIBE adds to the LSUB list; UNSUBSCRIBE removes; a subscription to a
    mailbox that does not exist (or no longer does) is kept, and LIST (SUBSCRIBED) shows it \\NonExistent
    (RFC 5258 §3.1)."""
    _, c = server.session()
    c.ok("CREATE Sub1")
    c.ok("SUBSCRIBE Sub1")
    assert b"Sub1" in listed(c, 'LSUB "" *')
    c.ok("UNSUBSCRIBE Sub1")
    assert b"Sub1" not in listed(c, 'LSUB "" *')
    r = c.cmd("SUBSCRIBE Ghost")
    if r.status == "OK":  # RFC 3501 §6.3.6: a server MAY refuse it; if it accepts it the name is listed
        assert b"Ghost" in listed(c, 'LSUB "" *')
        got = listed(c, 'LIST (SUBSCRIBED) "" Ghost')
        assert b"\\nonexistent" in got[b"Ghost"] and b"\\subscribed" in got[b"Ghost"]
    c.ok("CREATE Sub2")
    c.ok("SUBSCRIBE Sub2")
    c.ok("DELETE Sub2")
    assert b"Sub2" in listed(c, 'LSUB "" *')  # §6.3.4: DELETE does not unsubscribe


def test_lsub_percent_noselect_parent(server: Server) -> None:
    """RFC 3501 §6.3.9: LSUB with "%" returns a subscribed mailbox's unsubscribed parent as \\Noselect."""
    _, c = server.session()
    c.ok("CREATE Fa.Ch")
    c.ok("SUBSCRIBE Fa.Ch")
    got = listed(c, 'LSUB "" Fa%')
    assert got.get(b"Fa") is not None and b"\\noselect" in got[b"Fa"]


def test_list_extended_subscribed_recursivematch(server: Server) -> None:
    """RFC 5258 §3 / §3.5: LIST (SUBSCRIBED RECURSIVEMATCH) returns unsubscribed parents of subscribed
    children with CHILDINFO ("SUBSCRIBED")."""
    _, c = server.session()
    c.ok("CREATE Ro.Leaf")
    c.ok("SUBSCRIBE Ro.Leaf")
    r = c.ok('LIST (SUBSCRIBED RECURSIVEMATCH) "" Ro')
    (line,) = r.lines("LIST")
    assert b"CHILDINFO" in line.upper() and b"SUBSCRIBED" in line.upper()


def test_list_return_special_use(server: Server) -> None:
    """RFC 6154 §2/§5.1: LIST (SPECIAL-USE) "" * lists only mailboxes with a special use, with it; CREATE
    (USE (\\Flagged)) may be refused with NO [USEATTR]."""
    _, c = server.session()
    got = listed(c, 'LIST (SPECIAL-USE) "" *')
    assert got and all(set(a) & {b"\\sent", b"\\trash", b"\\drafts", b"\\junk", b"\\archive", b"\\all",
                                 b"\\flagged"} for a in got.values())
    assert b"\\sent" in got[b"Sent"]
    r = listed(c, 'LIST "" * RETURN (SPECIAL-USE)')
    assert b"\\sent" in r[b"Sent"] and b"INBOX" in r


def test_list_status(server: Server) -> None:
    """RFC 5819 §2: LIST ... RETURN (STATUS (MESSAGES UIDNEXT)) adds a STATUS response per listed mailbox."""
    _, c = server.session()
    c.ok("CREATE Ls")
    c.append("Ls", b"Subject: s\r\n\r\nx\r\n")
    r = c.ok('LIST "" Ls RETURN (STATUS (MESSAGES UIDNEXT SIZE))')
    assert r.lines("LIST")
    (st,) = r.lines("STATUS")
    tok = parse(st)
    vals = {tok[3][i].upper(): int(tok[3][i + 1]) for i in range(0, len(tok[3]), 2)}
    assert vals[b"MESSAGES"] == 1 and vals[b"SIZE"] == len(b"Subject: s\r\n\r\nx\r\n")


def test_status_items(server: Server) -> None:
    """RFC 3501 §6.3.10 (+ RFC 8438 SIZE, RFC 7162 HIGHESTMODSEQ): STATUS answers every asked item."""
    _, c = server.session()
    c.append("INBOX", b"Subject: a\r\n\r\nx\r\n")
    c.append("INBOX", b"Subject: b\r\n\r\nyy\r\n", flags="\\Seen")
    st = status(c, "INBOX", "MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN SIZE HIGHESTMODSEQ")
    assert st[b"MESSAGES"] == 2 and st[b"RECENT"] == 2 and st[b"UNSEEN"] == 1
    assert st[b"UIDNEXT"] >= 3 and st[b"UIDVALIDITY"] > 0 and st[b"HIGHESTMODSEQ"] > 0
    assert st[b"SIZE"] == len(b"Subject: a\r\n\r\nx\r\n") + len(b"Subject: b\r\n\r\nyy\r\n")
    assert c.cmd("STATUS NoSuch (MESSAGES)").status == "NO"


def test_uidnext_and_uidvalidity(server: Server) -> None:
    """RFC 3501 §2.3.1.1: UIDs strictly ascend and are never reused: after EXPUNGE of the last message,
    UIDNEXT does not go back; UIDVALIDITY stays while the mailbox exists."""
    _, c = server.session()
    c.ok("CREATE U")
    st0 = status(c, "U", "UIDNEXT UIDVALIDITY")
    c.append("U", b"Subject: 1\r\n\r\n1\r\n")
    c.append("U", b"Subject: 2\r\n\r\n2\r\n")
    st1 = status(c, "U", "UIDNEXT UIDVALIDITY")
    assert st1[b"UIDNEXT"] >= st0[b"UIDNEXT"] + 2 and st1[b"UIDVALIDITY"] == st0[b"UIDVALIDITY"]
    r = c.ok("SELECT U")
    assert f"UIDVALIDITY {st0[b'UIDVALIDITY']}".encode() in b" ".join(r.untagged)
    assert f"UIDNEXT {st1[b'UIDNEXT']}".encode() in b" ".join(r.untagged)
    c.ok("STORE 2 +FLAGS.SILENT (\\Deleted)")
    c.ok("EXPUNGE")
    c.ok("CLOSE")
    c.append("U", b"Subject: 3\r\n\r\n3\r\n")
    c.ok("SELECT U")
    r = c.ok("FETCH 1:* UID")
    uids = [int(re.search(rb"UID (\d+)", x).group(1)) for x in r.lines("FETCH")]  # type: ignore[union-attr]
    assert uids[-1] >= st1[b"UIDNEXT"], (uids, st1)


def test_uidvalidity_after_delete_create(server: Server) -> None:
    """RFC 3501 §2.3.1.1: a mailbox deleted and created again under the same name must not reuse a
    (UIDVALIDITY, UID) pair: the new UIDVALIDITY is greater (or the UIDs do not repeat)."""
    _, c = server.session()
    c.ok("CREATE Re")
    c.append("Re", b"Subject: old\r\n\r\nold\r\n")
    old = status(c, "Re", "UIDVALIDITY UIDNEXT")
    c.ok("DELETE Re")
    c.ok("CREATE Re")
    c.append("Re", b"Subject: new\r\n\r\nnew\r\n")
    new = status(c, "Re", "UIDVALIDITY UIDNEXT")
    assert new[b"UIDVALIDITY"] != old[b"UIDVALIDITY"] or new[b"UIDNEXT"] > old[b"UIDNEXT"]


def test_uidvalidity_after_rename(server: Server) -> None:
    """RFC 3501 §6.3.5 / §2.3.1.1: RENAME keeps the messages; a name reused after RENAME must not
    present the old (UIDVALIDITY, UID) pairs for different messages."""
    _, c = server.session()
    c.ok("CREATE Ra")
    c.append("Ra", b"Subject: one\r\n\r\n1\r\n")
    before = status(c, "Ra", "UIDVALIDITY UIDNEXT MESSAGES")
    c.ok("RENAME Ra Rb")
    after = status(c, "Rb", "MESSAGES")
    assert after[b"MESSAGES"] == 1
    assert c.cmd("STATUS Ra (MESSAGES)").status == "NO"
    c.ok("CREATE Ra")
    c.append("Ra", b"Subject: two\r\n\r\n2\r\n")
    fresh = status(c, "Ra", "UIDVALIDITY UIDNEXT")
    assert fresh[b"UIDVALIDITY"] != before[b"UIDVALIDITY"] or fresh[b"UIDNEXT"] > before[b"UIDNEXT"]


def test_rename_hierarchy_and_inbox(server: Server) -> None:
    """RFC 3501 §6.3.5: RENAME moves inferiors too; renaming to an existing name is NO."""
    _, c = server.session()
    c.ok("CREATE Ha.Hb")
    c.ok("RENAME Ha Hx")
    assert set(listed(c, 'LIST "" Hx*')) == {b"Hx", b"Hx.Hb"}
    c.ok("CREATE Old")
    c.ok("CREATE Hc")
    assert c.cmd("RENAME Old Hc").status == "NO"


def test_rename_inbox(server: Server, request: pytest.FixtureRequest) -> None:
    """RFC 3501 §6.3.5 / RFC 9051 §6.3.6: RENAME INBOX moves its messages to the new name, leaving INBOX
    empty."""
    dovecot_deviates(request, server, "RENAME INBOX is NO [CANNOT] with Maildir")
    _, c = server.session()
    c.append("INBOX", b"Subject: in\r\n\r\nin\r\n")
    c.ok("RENAME INBOX Old")
    assert status(c, "Old", "MESSAGES")[b"MESSAGES"] == 1
    assert status(c, "INBOX", "MESSAGES")[b"MESSAGES"] == 0


def test_select_nonexistent_and_trycreate(server: Server) -> None:
    """RFC 3501 §6.3.1: SELECT of a missing mailbox is NO (and leaves no mailbox selected); APPEND/COPY to
    one is NO [TRYCREATE] (§6.3.11, §6.4.7)."""
    _, c = server.session()
    c.ok("SELECT INBOX")
    assert c.cmd("SELECT Nope").status == "NO"
    assert c.cmd("FETCH 1 FLAGS").status == "BAD"
    r = c.cmd("APPEND Nope ", Lit(b"Subject: x\r\n\r\n"))
    assert r.status == "NO" and r.code() == "TRYCREATE"


def test_delete_inbox_refused(server: Server) -> None:
    """RFC 3501 §6.3.4: DELETE INBOX is an error."""
    _, c = server.session()
    assert c.cmd("DELETE INBOX").status == "NO"


def test_select_responses(server: Server) -> None:
    """RFC 3501 §6.3.1: SELECT answers FLAGS, EXISTS, RECENT, OK [UIDVALIDITY], OK [UIDNEXT],
    OK [PERMANENTFLAGS], and OK [READ-WRITE]; UNSEEN names the first unseen message."""
    _, c = server.session()
    c.append("INBOX", b"Subject: a\r\n\r\n1\r\n", flags="\\Seen")
    c.append("INBOX", b"Subject: b\r\n\r\n2\r\n")
    r = c.ok("SELECT INBOX")
    joined = b"\n".join(r.untagged)
    assert r.lines("FLAGS") and r.numbers("EXISTS") == [2] and r.numbers("RECENT") == [2]
    for code in (b"[UIDVALIDITY ", b"[UIDNEXT ", b"[PERMANENTFLAGS (", b"[UNSEEN 2]"):
        assert code in joined, code
    assert r.text.startswith(b"[READ-WRITE]")
