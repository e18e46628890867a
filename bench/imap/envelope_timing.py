"""In-process timing of the first ENVELOPE page (issue 13): not the quiet benchmark, not a test.

Builds a small Maildir INBOX from the benchmark corpus in a temporary directory, opens it
with the real mail store and times, per fresh page of 20 uncached messages, the worker-thread
step the FETCH command runs (``cmd_fetch._batch``: file reads, parse, cache writes), and
separately the parse alone (``Message(data).envelope()``). No server, no client, no network.

    .venv/bin/python -m bench.imap.envelope_timing [--messages 2000] [--pages 40]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from appliance.mailstore.account import MailStore
from bench.imap import corpus
from services.access.imap.cmd_fetch import _batch
from services.access.imapmsg import Message
from services.access.imapproto.types import FetchAtt

PAGE = 20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--pages", type=int, default=40)
    args = ap.parse_args()
    pages = min(args.pages, args.messages // PAGE)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "acct"
        corpus.build(root, args.messages)
        store = MailStore.open(root, background_fill=False)
        try:
            mbox = store.mailbox("INBOX")
            mbox.sync()
            uids = [r.uid for r in mbox.records_range([(1, 2**31)])]
            view = sorted(uids)
            atts = (FetchAtt("UID"), FetchAtt("ENVELOPE"))
            page_ms, page_cpu_ms = [], []
            for p in range(pages):  # fresh pages from the top, as a client scrolling down
                page = uids[len(uids) - (p + 1) * PAGE:len(uids) - p * PAGE]
                t0, c0 = time.perf_counter(), time.thread_time()
                out, _, _ = _batch(mbox, page, 0, atts, False, None, set(), view)
                page_ms.append((time.perf_counter() - t0) * 1000)
                page_cpu_ms.append((time.thread_time() - c0) * 1000)
                assert out.count(b" FETCH (") == PAGE
            datas = [mbox.read(u) for u in uids[:200]]
            t0 = time.perf_counter()
            for d in datas:
                Message(d).envelope()
            parse_us = (time.perf_counter() - t0) / len(datas) * 1e6
        finally:
            store.close()
    print(f"first ENVELOPE page of {PAGE} (in-process _batch, {pages} fresh pages of {args.messages} messages): "
          f"median {statistics.median(page_ms):.2f} ms, min {min(page_ms):.2f} ms; "
          f"CPU median {statistics.median(page_cpu_ms):.2f} ms")
    print(f"Message(data).envelope() on a ~3 KB message: {parse_us:.1f} us")


if __name__ == "__main__":
    main()
