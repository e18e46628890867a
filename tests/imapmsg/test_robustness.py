"""Any bytes in, a well-formed answer out: the parsers never raise on broken messages."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.access.imapmsg import Message, SearchContext, base_subject, compile_search, sort, thread
from services.access.imapproto.types import SearchKey, Section
from tests.imapmsg.test_search_vs_dovecot import View

PIECES = [b"\r\n", b"\n", b"--b", b"--b--", b"Content-Type: multipart/mixed; boundary=b\r\n",
          b"Content-Type: message/rfc822\r\n", b"Content-Transfer-Encoding: base64\r\n",
          b"Content-Transfer-Encoding: quoted-printable\r\n", b"From: ", b"To: g: a@b, <@r:c@d>;, (x) \"q\\\"\" <>\r\n",
          b"Subject: =?UTF-8?B?w6k=?= Re: [x] (fwd)\r\n", b"Date: Mon, 32 Foo 99999 25:61 +9999\r\n",
          b"References: <a> <b\r\n", b"\xff\xfe\x00", b"=", b"=?", b"(", b")", b"\"", b"<", b">", b";", b":", b"@", b" "]

messages = st.lists(st.one_of(st.sampled_from(PIECES), st.binary(max_size=8)), max_size=40).map(b"".join)


def bodystructure_is_balanced(value: bytes) -> bool:
    """Parentheses balance outside strings and literals (the answer parses as one list)."""
    depth, i, n = 0, 0, len(value)
    while i < n:
        c = value[i : i + 1]
        if c == b'"':
            i += 1
            while value[i : i + 1] != b'"':
                i += 2 if value[i : i + 1] == b"\\" else 1
        elif c == b"{":
            close = value.index(b"}", i)
            i = close + 3 + int(value[i + 1 : close])
            continue
        elif c == b"(":
            depth += 1
        elif c == b")":
            depth -= 1
            if depth < 0:
                return False
        i += 1
    return depth == 0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages)
def test_any_message_gives_answers(data: bytes) -> None:
    m = Message(data)
    env, bs, body = m.envelope(), m.bodystructure(True), m.bodystructure(False)
    for value in (env, bs, body):
        assert value.startswith(b"(") and bodystructure_is_balanced(value)
    for sec in (Section(), Section(text="HEADER"), Section(text="TEXT"), Section(part=(1,)), Section(part=(1, 1)),
                Section(part=(2,), text="MIME"), Section(part=(1,), text="HEADER.FIELDS", fields=("from",))):
        got = m.section(sec)
        assert got is None or isinstance(got, bytes)
        m.binary(sec)
    view = View(1, 1, (), len(data), 0.0, 1, False, data)
    ctx = SearchContext(max_seq=1, max_uid=1)
    for key in (SearchKey("TEXT", ("x",)), SearchKey("FROM", ("a",)), SearchKey("SENTON", (__import__("datetime").date(2020, 1, 1),))):
        compile_search(key).matches(view, ctx)
    sort([view], [("SUBJECT", False), ("DATE", True), ("FROM", False)])
    assert thread([view], "REFERENCES") == [(1,)]


@given(st.text(max_size=60))
def test_base_subject_never_fails(subject: str) -> None:
    base, _ = base_subject(subject)
    assert isinstance(base, str)


def test_deep_nesting_is_capped_not_a_crash() -> None:
    depth = 3000
    # Boundaries that are not prefixes of each other (a prefix would match, RFC 2046 §5.1.1 / Dovecot).
    head = b"".join(b"Content-Type: multipart/mixed; boundary=b%05d\r\n\r\n--b%05d\r\n" % (i, i) for i in range(depth))
    m = Message(head + b"\r\ninnermost\r\n")
    parts = m.tree.walk()
    assert len(parts) <= 102  # MAX_NESTING levels, the last one an opaque leaf
    assert m.bodystructure(True).count(b"(") < 300
    assert m.section(Section(part=(1,) * 5)) is not None


def test_deep_message_rfc822_nesting_is_capped() -> None:
    m = Message(b"Content-Type: message/rfc822\r\n\r\n" * 2000 + b"Subject: deep\r\n\r\nx\r\n")
    assert len(m.tree.walk()) <= 102
    assert m.bodystructure(False).startswith(b'("message" "rfc822"')


def test_many_parts_are_capped() -> None:
    body = b"".join(b"--b\r\n\r\npart %d\r\n" % i for i in range(12000)) + b"--b--\r\n"
    m = Message(b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + body)
    assert len(m.tree.children) == 9999  # the root counts too: MAX_PARTS parts in all
    last = m.section(Section(part=(len(m.tree.children),)))
    assert last is not None and last.startswith(b"part 9998\r\n--b") and last.endswith(b"part 11999\r\n--b--\r\n")


def test_long_reply_chain_threads_without_recursion() -> None:
    views = []
    for i in range(1, 3001):
        refs = b"References: <%d@x>\r\n" % (i - 1) if i > 1 else b""
        raw = b"Message-ID: <%d@x>\r\n" % i + refs + b"Subject: chain\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n\r\nx\r\n"
        views.append(View(i, i, (), len(raw), 0.0, 1, False, raw))
    threads = thread(views, "REFERENCES")
    assert threads == [tuple(range(1, 3001))]
    from services.access.imapmsg import serialize_thread

    assert serialize_thread(threads) == b"(" + b" ".join(b"%d" % i for i in range(1, 3001)) + b")"
