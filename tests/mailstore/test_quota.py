"""Quota limits, usage and the 90 % warning, on real stores."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.accounts import Account
from appliance.config import LimitClass
from appliance.mailstore import MailStore
from appliance.mailstore.quota import (
    QuotaLimits,
    check,
    limits_for,
    parse_size,
    usage,
    warning_due,
    warning_message,
)
from tests.mailstore.conftest import deliver

MSG = b"Subject: q\n\n" + b"x" * 100 + b"\n"


def test_parse_size() -> None:
    assert parse_size("2G") == 2 << 30 and parse_size("500M") == 500 << 20 and parse_size("10k") == 10240
    assert parse_size(123) == 123 and parse_size("77") == 77
    for bad in ("2X", "-1", "", "1.5G"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_limits_from_class_or_override() -> None:
    classes = {"default": LimitClass(messages_per_minute=1, burst=1, quota_storage="1M", quota_messages=10),
               "big": LimitClass(messages_per_minute=1, burst=1)}
    assert limits_for(Account("a@x.test"), classes) == QuotaLimits(1 << 20, 10)
    assert limits_for(Account("a@x.test", limit_class="big"), classes).unlimited
    assert limits_for(Account("a@x.test", quota_storage=0, quota_messages=5), classes) == QuotaLimits(0, 5)


def test_usage_counts_index_and_unindexed_deliveries(tmp_path: Path) -> None:
    root = tmp_path / "u"
    assert usage(root) == (0, 0)
    deliver(root, MSG)  # never opened by a session: no index yet
    size = len(MSG) + MSG.count(b"\n")
    assert usage(root) == (size, 1)
    s = MailStore.open(root, ["Sent"])
    s.mailbox("INBOX").sync()
    s.mailbox("Sent").append(MSG)
    deliver(root, MSG)  # delivered after the last sync
    assert usage(root) == (3 * size, 3) == s.usage()
    assert check(root, QuotaLimits(messages=3), 10) is not None
    exceeded = check(root, QuotaLimits(storage=3 * size + 5), 10)
    assert exceeded is not None and exceeded.resource == "STORAGE"
    assert check(root, QuotaLimits(storage=3 * size + 5), 5) is None
    s.close()


def test_warning_once_per_crossing(tmp_path: Path) -> None:
    limits = QuotaLimits(messages=10)
    assert not warning_due(tmp_path, limits, (0, 8))
    assert warning_due(tmp_path, limits, (0, 9))
    assert not warning_due(tmp_path, limits, (0, 10))
    assert not warning_due(tmp_path, limits, (0, 3))  # dropped below: armed again
    assert warning_due(tmp_path, limits, (0, 9))
    text = warning_message("a@x.test", (0, 9), limits, "postmaster@x.test")
    assert b"Subject: Your mailbox is almost full" in text and b"Messages: 9 of 10 (90 %)" in text
    assert b"\r\n" not in text


@pytest.mark.root
def test_usage_read_by_another_user_creates_no_files(tmp_path: Path) -> None:
    import os
    import pwd

    if os.geteuid() != 0:
        pytest.fail("needs root (run the suite as root, as CI does)")
    root = tmp_path / "example.test" / "odd%2F.name#1"  # URI-special characters in the path
    s = MailStore.open(root)
    s.mailbox("INBOX").append(MSG)
    s.close()
    nobody = pwd.getpwnam("nobody")
    for p in [root, *root.iterdir()]:
        os.chown(p, nobody.pw_uid, nobody.pw_gid)
    before = sorted(os.listdir(root))
    assert usage(root) == (len(MSG) + MSG.count(b"\n"), 1)  # as root, like `appliance status`
    assert sorted(os.listdir(root)) == before  # no root-owned -wal/-shm that the service could not open
