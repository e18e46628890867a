"""Fixtures for the mail store tests: a fresh account root, messages written as the relay writes them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.mailstore import MailStore
from appliance.mailstore.maildir import crlf_size, unique_name

SPECIALS = ("Sent", "Drafts", "Trash", "Junk")


def deliver(root: Path, body: bytes = b"Subject: hello\n\nhi\n", vsize: bool = True) -> str:
    """Put BODY into ROOT/new/ the way appliance.delivery.local does (tmp/, then rename)."""
    name = unique_name() + (f",W={crlf_size(body)}" if vsize else "")
    (root / "tmp").mkdir(parents=True, exist_ok=True)
    (root / "new").mkdir(parents=True, exist_ok=True)
    (root / "tmp" / name).write_bytes(body)
    (root / "tmp" / name).rename(root / "new" / name)
    return name


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "example.test" / "alice"


@pytest.fixture
def store(root: Path) -> Iterator[MailStore]:
    s = MailStore.open(root, SPECIALS, "Outbox")
    yield s
    s.close()
