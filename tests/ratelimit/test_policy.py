"""The limits and abuse-brake checks inside the relay's real policy pipeline, with a manual clock.

Sessions are driven the way services/relay drives them (connect, MAIL, RCPT appended
on success, DATA, accepted, disconnect); the SMTP, IMAP and POP paths differ only in
listener/protocol, which is exactly what must not let a customer double a quota.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.accounts import AccountStore, LimitOverride
from appliance.config import Config
from appliance.message import Message
from appliance.policy.pipeline import PolicyContext, build
from appliance.policy.session import Envelope, Session
from appliance.policy.verdicts import Verdict
from appliance.ratelimit import runtime
from appliance.ratelimit.clock import ManualClock
from appliance.registry.model import parse as parse_registry
from tests.ratelimit.conftest import make_config

ALICE = "alice@example.test"
MEMBER_IP = "192.0.2.10"


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    return make_config(
        tmp_path,
        limits={
            "classes": {"default": {"messages_per_minute": 6, "burst": 2, "per_day": 100}},
            "connections_per_ip": 3,
            "auth_failures_per_ip": 3,
            "auth_failure_window": 60,
            "abuse_brake": {"new_recipients": 50, "rejected_ratio": 0.5, "min_sample": 4},
        },
        relay={"max_recipients": 5},
    )


@pytest.fixture
def ctx(cfg: Config, clock: ManualClock) -> PolicyContext:
    accounts = AccountStore(cfg.paths.accounts_db)
    accounts.add(ALICE, "correct horse battery")
    accounts.add("bob@example.test", "correct horse battery")
    rt = runtime.build(cfg, clock)
    runtime.install(cfg, rt)
    yield PolicyContext(cfg, accounts)
    rt.close()
    accounts.close()


@pytest.fixture
def registry():
    return parse_registry(json.loads(json.dumps({
        "members": [
            {"id": "example", "status": "active", "domains": ["example.test"],
             "relays": [{"host": "mx.example.test", "addresses": ["127.0.0.1/32"]}]},
            {"id": "isp-a", "status": "active", "domains": ["isp-a.example"],
             "relays": [{"host": "mx.isp-a.example", "addresses": ["192.0.2.0/24"]}],
             "limits": {"messages_per_minute": 60, "burst": 2, "connections": 2}},
        ]
    })))


def customer_session(ctx: PolicyContext, listener: str, protocol: str = "smtp", ip: str = "203.0.113.5") -> Session:
    s = Session(listener=listener, client_ip=ip, protocol=protocol, tls=True)  # type: ignore[arg-type]
    s.login = ALICE
    s.account = ctx.accounts.get(ALICE)  # as the relay reads it before each MAIL
    return s


def send(pipe, session: Session, recipients: list[str],  # type: ignore[no-untyped-def]
         accounts: AccountStore) -> Verdict | str:
    """One transaction as the relay runs it: it looks up the account before MAIL and each recipient's
    owner before RCPT (Session.account, Session.recipient_owner), and appends a recipient when the
    pipeline had no objection."""
    session.reset_transaction()
    if session.login is not None:
        session.account = accounts.get(session.login)
    v = pipe.mail(session, ALICE if session.listener != "mx" else "someone@isp-a.example")
    if v:
        return v
    for r in recipients:
        session.recipient_owner = accounts.owner_of(r)
        if pipe.rcpt(session, r) is None:
            session.recipients.append(r)
    if not session.recipients:
        return "no recipients"
    msg = Message.parse(f"From: {ALICE}\r\nTo: x\r\nSubject: t\r\n\r\nhi\r\n".encode())
    v = pipe.data(session, msg)
    if v:
        return v
    pipe.accepted(session, Envelope("Q1", ALICE, tuple(session.recipients), 10))
    return "250"


def test_smtp_imap_and_pop_share_one_quota(ctx: PolicyContext, clock: ManualClock) -> None:
    pipe = build(ctx)
    smtp = customer_session(ctx, "submission")
    imap = customer_session(ctx, "internal", "imap")
    pop = customer_session(ctx, "internal", "pop")
    results = [send(pipe, s, ["bob@example.test"], ctx.accounts) for s in (smtp, imap, pop, smtp, imap, pop)]
    assert results[:2] == ["250", "250"]  # burst 2, whichever path
    for v in results[2:]:
        assert isinstance(v, Verdict) and v.code == 450 and v.enhanced == "4.7.1"
        assert "retry in 10 s" in v.text and ALICE in v.text
    clock.advance(10)
    assert send(pipe, pop, ["bob@example.test"], ctx.accounts) == "250"
    assert isinstance(send(pipe, smtp, ["bob@example.test"], ctx.accounts), Verdict)


def test_refused_transaction_gives_its_reservation_back(ctx: PolicyContext) -> None:
    pipe = build(ctx)
    s = customer_session(ctx, "submission")
    for _ in range(5):
        # Reserved at DATA, then the spool "fails": no on_accepted; the next MAIL cancels it.
        s.reset_transaction()
        assert pipe.mail(s, ALICE) is None
        s.recipient_owner = ctx.accounts.owner_of("bob@example.test")  # as the relay looks it up
        assert pipe.rcpt(s, "bob@example.test") is None
        s.recipients.append("bob@example.test")
        assert pipe.data(s, Message.parse(f"From: {ALICE}\r\n\r\nx\r\n".encode())) is None
    pipe.disconnect(s)
    again = [send(pipe, customer_session(ctx, "submission"), ["bob@example.test"], ctx.accounts) for _ in range(2)]
    assert again == ["250", "250"]


def test_override_and_recipient_cap(ctx: PolicyContext) -> None:
    ctx.accounts.set_limits(ALICE, LimitOverride(per_minute=600, burst=50))
    pipe = build(ctx)
    s = customer_session(ctx, "submission")
    s.reset_transaction()
    assert pipe.mail(s, ALICE) is None
    verdicts = []
    for i in range(7):
        v = pipe.rcpt(s, f"r{i}@elsewhere.example")
        if v is None:
            s.recipients.append(f"r{i}@elsewhere.example")
        verdicts.append(v)
    assert verdicts[:5] == [None] * 5
    assert all(v is not None and (v.code, v.enhanced) == (452, "4.5.3") for v in verdicts[5:])


def test_connections_per_ip_421_before_banner_and_released_on_close(ctx: PolicyContext) -> None:
    pipe = build(ctx)
    sessions = [Session(listener="submission", client_ip=f"2001:db8::{i}") for i in range(1, 5)]
    verdicts = [pipe.connect(s) for s in sessions]
    assert verdicts[:3] == [None, None, None]
    assert verdicts[3].code == 421 and verdicts[3].enhanced == "4.7.0" and verdicts[3].close
    assert "2001:db8::/64" in verdicts[3].text
    pipe.disconnect(sessions[3])  # the refused one was never counted
    pipe.disconnect(sessions[0])
    assert pipe.connect(Session(listener="submission", client_ip="2001:db8::9")) is None


def test_auth_failures_from_smtp_and_imap_share_the_address(ctx: PolicyContext) -> None:
    pipe = build(ctx)
    smtp = Session(listener="submission", client_ip="198.51.100.7")
    imap = Session(listener="internal", client_ip="198.51.100.7", protocol="imap")  # XAUTHFAIL
    assert pipe.auth_check(smtp) is None
    assert pipe.auth(smtp, ALICE, ok=False) is None
    assert pipe.auth(imap, ALICE, ok=False) is None
    v = pipe.auth(smtp, ALICE, ok=False)
    assert v is not None and v.reply().startswith("421 4.7.0 too many authentication failures, retry in 20 s")
    assert pipe.auth_check(imap).code == 421  # XAUTHCHECK from the access service
    assert pipe.auth_check(Session(listener="submission", client_ip="198.51.100.8")) is None


def test_member_over_its_registry_limit_gets_450(ctx: PolicyContext, registry) -> None:  # type: ignore[no-untyped-def]
    pipe = build(ctx)
    s = Session(listener="mx", client_ip=MEMBER_IP, registry=registry)
    assert pipe.connect(s) is None
    results = [send(pipe, s, ["bob@example.test"], ctx.accounts) for _ in range(4)]
    assert results[:2] == ["250", "250"]
    for v in results[2:]:
        assert isinstance(v, Verdict) and (v.code, v.enhanced) == (450, "4.7.1") and "member isp-a" in v.text
    # registry connections: 2 per member, across the member's hosts
    assert pipe.connect(Session(listener="mx", client_ip="192.0.2.11", registry=registry)) is None
    third = pipe.connect(Session(listener="mx", client_ip="192.0.2.12", registry=registry))
    assert third is not None and third.code == 421


def test_refused_recipients_hold_the_account(ctx: PolicyContext) -> None:
    pipe = build(ctx)
    s = customer_session(ctx, "submission")
    # Mailboxes that do not exist are refused (550 5.1.1): evidence for the brake.
    result = send(pipe, s, ["bob@example.test", "x@example.test", "y@example.test", "z@example.test"],
                  ctx.accounts)
    assert result == "250"
    pipe.disconnect(s)
    runtime.for_config(ctx.cfg).brake.flush()  # the hold is written by the brake's writer thread
    account = ctx.accounts.get(ALICE)
    assert account.held and "3 of 4 recipients refused" in account.held_reason
    v = pipe.mail(customer_session(ctx, "internal", "imap"), ALICE)
    assert v is not None and (v.code, v.enhanced) == (450, "4.7.1")
