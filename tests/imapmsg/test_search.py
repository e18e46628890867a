"""SEARCH semantics that need no reference server: flags, \\Recent, sets, "$", MODSEQ, laziness."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import pytest

from services.access.imapmsg import SearchContext, SearchError, compile_search, matches
from services.access.imapproto.types import SearchKey, SequenceSet


def K(op: str, *args: object) -> SearchKey:
    return SearchKey(op, tuple(args))


@dataclass
class View:
    uid: int
    seq: int
    flags: tuple[str, ...] = ()
    size: int = 100
    internaldate: float = 0.0
    modseq: int = 1
    recent: bool = False
    raw: bytes = b"Subject: s\r\n\r\nbody\r\n"
    reads: list[int] = field(default_factory=list)

    def data(self) -> bytes:
        self.reads.append(self.uid)
        return self.raw


def run(key: SearchKey, views: list[View], **ctx: object) -> list[int]:
    c = SearchContext(max_seq=len(views), max_uid=max((v.uid for v in views), default=0), **ctx)  # type: ignore[arg-type]
    prog = compile_search(key)
    return [v.uid for v in views if prog.matches(v, c)]


def mailbox() -> list[View]:
    return [
        View(10, 1, ("\\Seen",), recent=True),
        View(20, 2, (), recent=True),
        View(30, 3, ("\\Seen", "\\Flagged", "$Work"), recent=False),
        View(40, 4, ("\\Deleted", "\\Answered", "\\Draft"), size=5000, modseq=9),
    ]


def test_new_old_recent() -> None:
    # RFC 3501 §6.4.4: NEW is RECENT and UNSEEN; OLD is NOT RECENT.
    v = mailbox()
    assert run(K("RECENT"), v) == [10, 20]
    assert run(K("NEW"), v) == [20]
    assert run(K("OLD"), v) == [30, 40]


def test_flag_keys_and_keywords_case_insensitive() -> None:
    v = mailbox()
    assert run(K("SEEN"), v) == [10, 30]
    assert run(K("UNSEEN"), v) == [20, 40]
    assert run(K("DELETED"), v) == [40]
    assert run(K("UNANSWERED"), v) == [10, 20, 30]
    assert run(K("DRAFT"), v) == [40]
    assert run(K("KEYWORD", "$work"), v) == [30]
    assert run(K("UNKEYWORD", "$WORK"), v) == [10, 20, 40]


def test_sequence_and_uid_sets_with_star() -> None:
    v = mailbox()
    assert run(K("SEQSET", SequenceSet(((2, None),))), v) == [20, 30, 40]
    assert run(K("SEQSET", SequenceSet(((None, None),))), v) == [40]
    assert run(K("UID", SequenceSet(((25, None),))), v) == [30, 40]
    assert run(K("UID", SequenceSet(((40, 15),))), v) == [20, 30, 40]  # a:b is b:a


def test_saved_result_dollar() -> None:
    v = mailbox()
    dollar = SequenceSet(saved=True)
    assert run(K("UID", dollar), v, saved=(20, 40)) == [20, 40]
    assert run(K("SEQSET", dollar), v, saved=(30,)) == [30]
    assert run(K("UID", dollar), v) == []  # RFC 5182 §2.1: nothing saved is the empty set


def test_modseq_larger_smaller() -> None:
    v = mailbox()
    assert run(K("MODSEQ", 5, None, None), v) == [40]
    assert run(K("LARGER", 100), v) == [40]
    assert run(K("SMALLER", 101), v) == [10, 20, 30]


def test_internal_date_compares_days_in_the_context_zone() -> None:
    t = dt.datetime(2024, 3, 1, 23, 30, tzinfo=dt.UTC).timestamp()
    v = [View(1, 1, internaldate=t)]
    assert run(K("ON", dt.date(2024, 3, 1)), v) == [1]
    assert run(K("BEFORE", dt.date(2024, 3, 1)), v) == []
    assert run(K("SINCE", dt.date(2024, 3, 1)), v) == [1]
    east = dt.timezone(dt.timedelta(hours=2))
    assert run(K("ON", dt.date(2024, 3, 2)), v, tz=east) == [1]


def test_older_younger() -> None:
    v = [View(1, 1, internaldate=1000.0), View(2, 2, internaldate=1900.0)]
    assert run(K("OLDER", 500), v, now=2000.0) == [1]
    assert run(K("YOUNGER", 500), v, now=2000.0) == [2]


def test_sent_date_uses_the_header_calendar_day() -> None:
    late = View(1, 1, raw=b"Date: Mon, 1 Jan 2024 23:59:00 -1200\r\n\r\nx\r\n")
    none = View(2, 2, raw=b"Subject: no date\r\n\r\nx\r\n")
    assert run(K("SENTON", dt.date(2024, 1, 1)), [late, none]) == [1]
    assert run(K("SENTBEFORE", dt.date(1971, 1, 1)), [late, none]) == [2]


def test_sent_date_before_1970() -> None:
    old = View(1, 1, raw=b"Date: Thu, 13 Feb 1969 23:32:54 -0330\r\n\r\nx\r\n")
    assert run(K("SENTON", dt.date(1969, 2, 13)), [old]) == [1]
    assert run(K("SENTSINCE", dt.date(2000, 1, 1)), [old]) == []


def test_metadata_keys_never_read_the_message() -> None:
    v = mailbox()
    key = K("AND", K("OR", K("SEEN"), K("LARGER", 10)), K("NOT", K("DELETED")), K("UID", SequenceSet(((1, None),))))
    prog = compile_search(key)
    assert prog.metadata_only
    assert run(key, v) == [10, 20, 30]
    assert not any(x.reads for x in v)


def test_content_keys_run_after_cheap_ones() -> None:
    v = mailbox()
    key = K("AND", K("BODY", "body"), K("SEEN"))
    assert not compile_search(key).metadata_only
    assert run(key, v) == [10, 30]
    assert [x.uid for x in v if x.reads] == [10, 30]  # unseen messages were never read


def test_many_messages_metadata_only() -> None:
    views = [View(i, i, ("\\Seen",) if i % 3 == 0 else ()) for i in range(1, 100_001)]
    assert len(run(K("AND", K("UNSEEN"), K("UID", SequenceSet(((50_001, None),)))), views)) == 33_333
    assert not any(x.reads for x in views)


def test_header_empty_string_matches_presence() -> None:
    v = [View(1, 1, raw=b"X-A: \r\n\r\nx\r\n"), View(2, 2, raw=b"X-B: 1\r\n\r\nx\r\n")]
    assert run(K("HEADER", "x-a", ""), v) == [1]


def test_matches_convenience_and_unknown_key() -> None:
    ctx = SearchContext(max_seq=1, max_uid=5)
    assert matches(K("UID", SequenceSet(((5, 5),))), View(5, 1), ctx)
    with pytest.raises(SearchError):
        compile_search(K("NOSUCHKEY")).matches(View(5, 1), ctx)
