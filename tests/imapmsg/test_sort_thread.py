"""RFC 5256: base subject, SORT keys and tie-breaks, THREAD shapes and the response format."""

from __future__ import annotations

import pytest

from services.access.imapmsg import base_subject, serialize_thread, sort, thread
from tests.imapmsg.test_search_vs_dovecot import View


@pytest.mark.parametrize(("subject", "base", "reply"), [
    ("Hello", "Hello", False),
    ("Re: Hello", "Hello", True),
    ("RE: re: Fwd: fw: Hello", "Hello", True),
    ("Re[2]: Hello", "Hello", True),
    ("Fwd[list]: Hello", "Hello", True),
    ("[list] Re: Hello", "Hello", True),
    ("[list] [other] Hello", "Hello", False),
    ("[only a blob]", "[only a blob]", False),
    ("Hello (fwd)", "Hello", True),
    ("Hello (FWD) (fwd)  ", "Hello", True),
    ("[fwd: Re: Hello]", "Hello", True),
    ("[Fwd: [list] Hello (fwd)]", "Hello", True),
    ("  Re:\t spaced    out  ", "spaced out", True),
    ("=?UTF-8?Q?Re=3A_Caf=C3=A9?=", "Café", True),
    ("Are: not a prefix", "Are: not a prefix", False),
    ("Subject re: x", "Subject re: x", False),
    ("", "", False),
])
def test_base_subject(subject: str, base: str, reply: bool) -> None:
    assert base_subject(subject) == (base, reply)


def v(uid: int, subject: str = "s", date: str = "", frm: str = "", size: int = 10, arrival: float = 0.0,
      extra: str = "") -> View:
    head = f"Subject: {subject}\r\n" + (f"Date: {date}\r\n" if date else "") + (f"From: {frm}\r\n" if frm else "")
    return View(uid, uid, (), size, arrival, 1, False, (head + extra + "\r\nbody\r\n").encode())


def test_sort_ties_keep_mailbox_order_even_reversed() -> None:
    views = [v(1, size=5), v(2, size=9), v(3, size=5), v(4, size=9)]
    assert sort(views, [("SIZE", False)]) == [1, 3, 2, 4]
    assert sort(views, [("SIZE", True)]) == [2, 4, 1, 3]


def test_sort_date_uses_utc_and_falls_back_to_internal_date() -> None:
    views = [
        v(1, date="Mon, 1 Jan 2024 10:00:00 +0200"),  # 08:00 UTC
        v(2, date="Mon, 1 Jan 2024 09:00:00 +0000"),
        v(3, date="garbage", arrival=1704067200.0 + 3600 * 8.5),  # 08:30 UTC, from INTERNALDATE
    ]
    assert sort(views, [("DATE", False)]) == [1, 3, 2]
    assert sort(views, [("ARRIVAL", False)]) == [1, 2, 3]


def test_sort_date_before_1970_comes_first() -> None:
    views = [v(1, date="Mon, 1 Jan 2024 10:00:00 +0000"), v(2, date="Thu, 13 Feb 1969 23:32:54 -0330")]
    assert sort(views, [("DATE", False)]) == [2, 1]


def test_sort_subject_then_reverse_date() -> None:
    views = [v(1, "Re: b", "Mon, 1 Jan 2024 10:00:00 +0000"), v(2, "a", "Mon, 1 Jan 2024 10:00:00 +0000"),
             v(3, "B", "Tue, 2 Jan 2024 10:00:00 +0000")]
    assert sort(views, [("SUBJECT", False), ("DATE", True)]) == [2, 3, 1]


def test_sort_from_uses_the_first_mailbox() -> None:
    views = [v(1, frm="Zed <alpha@x>"), v(2, frm="Adam <zulu@x>, alpha@y"), v(3, frm="")]
    assert sort(views, [("FROM", False)]) == [3, 1, 2]


def test_unknown_sort_key_is_refused() -> None:
    with pytest.raises(ValueError):
        sort([v(1)], [("NOSUCH", False)])


def chain(uid: int, mid: str, subject: str, date: str, refs: str = "", irt: str = "") -> View:
    extra = f"Message-ID: {mid}\r\n" + (f"References: {refs}\r\n" if refs else "") + (
        f"In-Reply-To: {irt}\r\n" if irt else "")
    return v(uid, subject, date, extra=extra)


D = "Mon, {} Jan 2024 10:00:00 +0000".format


def test_references_chain_branches_and_dummy_root() -> None:
    views = [
        chain(1, "<a>", "topic", D(1)),
        chain(2, "<b>", "Re: topic", D(2), irt="<a>"),
        chain(3, "<c>", "Re: topic", D(3), refs="<a> <b>"),
        chain(4, "<d>", "Re: topic", D(4), refs="<a>"),
        chain(5, "<e>", "one", D(5), refs="<gone>"),
        chain(6, "<f>", "two", D(6), refs="<gone>"),
        chain(7, "<g>", "alone", D(7)),
    ]
    threads = thread(views, "REFERENCES")
    assert threads == [(1, (2, 3), (4,)), ((5,), (6,)), (7,)]
    assert serialize_thread(threads) == b"(1 (2 3)(4))((5)(6))(7)"


def test_references_broken_chain_reparents_and_subject_merge() -> None:
    views = [
        chain(1, "<a>", "topic", D(1)),
        chain(2, "<c>", "Re: topic", D(3), refs="<b>"),  # parent <b> never arrives
        chain(3, "<x>", "Re: other", D(2)),
        chain(4, "<y>", "other", D(4)),
    ]
    # <b> is a dummy with one child, promoted; then same-subject threads merge (step 5).
    assert thread(views, "REFERENCES") == [(1, 2), (4, 3)]


def test_references_loops_are_not_created() -> None:
    views = [chain(1, "<n>", "cycle", D(1), refs="<p>"), chain(2, "<p>", "cycle2", D(2), refs="<n>"),
             chain(3, "<k>", "self", D(3), refs="<k>")]
    assert thread(views, "REFERENCES") == [(2, 1), (3,)]


def test_ordered_subject() -> None:
    views = [v(1, "b", D(3)), v(2, "Re: a", D(2)), v(3, "a", D(1)), v(4, "Re: b", D(4)), v(5, "A", D(5))]
    threads = thread(views, "ORDEREDSUBJECT")
    assert threads == [(3, (2,), (5,)), (1, 4)]
    assert serialize_thread(threads) == b"(3 (2)(5))(1 4)"


def test_serialize_thread_rfc5256_example_shape() -> None:
    assert serialize_thread([(2,), (3, 6, (4, 23), (44, 7, 96))]) == b"(2)(3 6 (4 23)(44 7 96))"
    assert serialize_thread([]) == b""


def test_unknown_thread_algorithm_is_refused() -> None:
    with pytest.raises(ValueError):
        thread([v(1)], "NOSUCH")


def test_arrival_and_size_sorts_never_read_messages() -> None:
    views = [v(i, size=10 - i, arrival=float(i)) for i in range(1, 6)]
    assert sort(views, [("SIZE", False)]) == [5, 4, 3, 2, 1]
    assert sort(views, [("ARRIVAL", True)]) == [5, 4, 3, 2, 1]
    assert not any(x.reads for x in views)
