"""The abuse brake: first-time recipients and refusal ratio hold an account; release resets the window."""

from __future__ import annotations

import email
from pathlib import Path

import pytest

from appliance.accounts import AccountStore
from appliance.config import Config
from appliance.ratelimit.brake import AbuseBrake, release
from appliance.ratelimit.clock import ManualClock
from appliance.ratelimit.store import LimitStore, limits_db
from tests.ratelimit.conftest import make_config

ALICE = "alice@example.test"


@pytest.fixture
def brake_cfg(tmp_path: Path) -> Config:
    return make_config(
        tmp_path,
        limits={"abuse_brake": {"window": 600, "new_recipients": 10, "rejected_ratio": 0.5, "min_sample": 6}},
    )


@pytest.fixture
def accounts(brake_cfg: Config) -> AccountStore:
    store = AccountStore(brake_cfg.paths.accounts_db)
    store.add(ALICE, "correct horse battery")
    yield store
    store.close()


@pytest.fixture
def brake(brake_cfg: Config, accounts: AccountStore, clock: ManualClock) -> AbuseBrake:
    store = LimitStore(limits_db(brake_cfg), clock.time)
    yield AbuseBrake(brake_cfg, store, accounts, clock)
    store.close()


def postmaster_mail(cfg: Config) -> list[email.message.Message]:
    new = Path(cfg.paths.mail_dir) / "example.test" / "postmaster" / "new"
    return [email.message_from_bytes(p.read_bytes()) for p in sorted(new.glob("*"))] if new.exists() else []


def test_regular_correspondents_never_trip(brake: AbuseBrake, accounts: AccountStore, clock: ManualClock) -> None:
    friends = [f"friend{i}@elsewhere.example" for i in range(9)]
    for _ in range(50):
        assert brake.record_accepted(ALICE, friends) is None
        clock.advance(30)
    assert not accounts.get(ALICE).held


def test_many_first_time_recipients_hold_and_notify(
    brake: AbuseBrake, brake_cfg: Config, accounts: AccountStore, clock: ManualClock
) -> None:
    assert brake.record_accepted(ALICE, [f"v{i}@spam.example" for i in range(9)]) is None
    reason = brake.record_accepted(ALICE, ["v9@spam.example"])
    assert reason and "10 first-time recipients" in reason
    acct = accounts.get(ALICE)
    assert acct.held and "first-time" in acct.held_reason
    [note] = postmaster_mail(brake_cfg)
    assert ALICE in note["Subject"] and note["To"] == "postmaster@example.test"
    assert f"appliance user release {ALICE}" in note.get_payload()
    # Further events do not send a second notification.
    brake.record_accepted(ALICE, ["v10@spam.example"])
    assert len(postmaster_mail(brake_cfg)) == 1


def test_new_recipients_outside_the_window_do_not_add_up(
    brake: AbuseBrake, accounts: AccountStore, clock: ManualClock
) -> None:
    for i in range(30):
        brake.record_accepted(ALICE, [f"n{i}@x.example"])
        clock.advance(67)  # any 10 in a row span 603 s > the 600 s window
    assert not accounts.get(ALICE).held


def test_rejected_ratio_needs_min_sample(brake: AbuseBrake, accounts: AccountStore) -> None:
    brake.record_accepted(ALICE, ["a@x.example", "b@x.example"])
    assert brake.record_rejected(ALICE, 3) is None  # 3 of 5 tried: under min_sample 6
    reason = brake.record_rejected(ALICE)
    assert reason and "4 of 6 recipients refused or bounced" in reason
    assert accounts.get(ALICE).held


def test_known_recipients_survive_a_restart(brake_cfg: Config, accounts: AccountStore, clock: ManualClock) -> None:
    people = [f"p{i}@x.example" for i in range(9)]
    store = LimitStore(limits_db(brake_cfg), clock.time)
    AbuseBrake(brake_cfg, store, accounts, clock).record_accepted(ALICE, people)
    store.close()
    store = LimitStore(limits_db(brake_cfg), clock.time)
    again = AbuseBrake(brake_cfg, store, accounts, clock)
    clock.advance(1)
    # After the restart the same 9 people are not first-time recipients; one new one is fine.
    assert again.record_accepted(ALICE, [*people, "new@x.example"]) is None
    assert again.tally(ALICE).new == 1
    store.close()


def test_release_lifts_the_hold_and_resets_the_window(
    brake: AbuseBrake, brake_cfg: Config, accounts: AccountStore, clock: ManualClock
) -> None:
    brake.record_accepted(ALICE, [f"v{i}@spam.example" for i in range(10)])
    assert accounts.get(ALICE).held
    clock.advance(1)
    release(brake_cfg, accounts, ALICE, clock)  # what `appliance user release` does, from another process
    assert not accounts.get(ALICE).held
    clock.advance(1)
    # At once, before the limiter's writer has read the release: the events that tripped
    # the brake may still be in the judgement, but they do not hold the account again.
    brake.record_accepted(ALICE, ["one-more@spam.example"])
    assert not accounts.get(ALICE).held
    brake.flush()  # one batch later the release is known to the judgement too
    assert brake.tally(ALICE).new == 1
    assert brake.record_accepted(ALICE, ["and-another@spam.example"]) is None
    assert not accounts.get(ALICE).held


def test_disabled_brake_records_nothing(tmp_path: Path, clock: ManualClock) -> None:
    cfg = make_config(tmp_path, limits={"abuse_brake": {"enabled": False, "new_recipients": 1}})
    accounts = AccountStore(cfg.paths.accounts_db)
    accounts.add(ALICE, "correct horse battery")
    store = LimitStore(limits_db(cfg), clock.time)
    brake = AbuseBrake(cfg, store, accounts, clock)
    assert brake.record_accepted(ALICE, ["x@y.example"]) is None
    assert not accounts.get(ALICE).held
    store.close()
    accounts.close()
