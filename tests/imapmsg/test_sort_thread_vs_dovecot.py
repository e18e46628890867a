"""Differential: SORT and THREAD (RFC 5256) against Dovecot, over a threading set and the corpus."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.access.imapmsg import mimetree, serialize_thread, sort, thread
from tests.imapmsg.dovecot_ref import Session, dovecot
from tests.imapmsg.test_search_vs_dovecot import PRE_1970, View

CORPUS = Path(__file__).parent / "corpus"
# The message dated 1969 is left out: Dovecot sorts dates before 1970 after every other one
# (time_t), RFC 5256 §3 puts them first, as we do (test_sort_thread.py checks it).
SETS = {"INBOX": sorted(p for p in CORPUS.glob("*.eml") if p.name != PRE_1970),
        "Threads": sorted((CORPUS / "threads").glob("*.eml"))}


def internal(i: int) -> dt.datetime:
    # Not in file order, so ARRIVAL and the DATE fallback to it are really tested.
    return dt.datetime(2021, 6, 1, tzinfo=dt.UTC) + dt.timedelta(hours=(i * 37) % 101)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Session, dict[str, list[View]]]]:
    with dovecot(tmp_path_factory.mktemp("dovecot-sort")) as dv:
        s = Session(dv)
        _, ok = s.command("CREATE Threads")
        assert ok.startswith(b"OK"), ok
        views: dict[str, list[View]] = {}
        for box, files in SETS.items():
            views[box] = []
            for i, f in enumerate(files, 1):
                raw = f.read_bytes()
                when = internal(i)
                uid = s.append(raw, when.strftime("%d-%b-%Y %H:%M:%S +0000"), mailbox=box)
                views[box].append(View(uid, i, (), len(mimetree.crlf(raw)), when.timestamp(), 1, False, raw))
        yield s, views
        s.close()


SORTS = ["SUBJECT", "DATE", "REVERSE DATE", "ARRIVAL", "FROM", "TO", "CC", "SIZE", "REVERSE SIZE SUBJECT",
         "SUBJECT REVERSE DATE", "REVERSE FROM DATE", "CC TO SIZE"]


@pytest.mark.parametrize("box", list(SETS))
@pytest.mark.parametrize("criteria", SORTS)
def test_sort_same_as_dovecot(reference: tuple[Session, dict[str, list[View]]], box: str, criteria: str) -> None:
    s, views = reference
    _, ok = s.command(f"SELECT {box}")
    assert ok.startswith(b"OK")
    untagged, ok = s.command(f"UID SORT ({criteria}) UTF-8 ALL")
    assert ok.startswith(b"OK"), ok
    theirs = [int(x) for x in next(r for r in untagged if r.startswith(b"* SORT")).split()[2:]]
    words = criteria.split()
    crit: list[tuple[str, bool]] = []
    rev = False
    for w in words:
        if w == "REVERSE":
            rev = True
        else:
            crit.append((w, rev))
            rev = False
    assert sort(views[box], crit) == theirs


@pytest.mark.parametrize("box", list(SETS))
@pytest.mark.parametrize("algorithm", ["ORDEREDSUBJECT", "REFERENCES"])
def test_thread_same_as_dovecot(reference: tuple[Session, dict[str, list[View]]], box: str, algorithm: str) -> None:
    s, views = reference
    _, ok = s.command(f"SELECT {box}")
    assert ok.startswith(b"OK")
    untagged, ok = s.command(f"UID THREAD {algorithm} UTF-8 ALL")
    assert ok.startswith(b"OK"), ok
    theirs = next(r for r in untagged if r.startswith(b"* THREAD"))[len(b"* THREAD ") :]
    assert serialize_thread(thread(views[box], algorithm)) == theirs
