"""Mail from outside the consortium with relay.outsiders = "verify", against real DNS (knot) in namespaces.

What a user sees: the SMTP replies a real Postfix or swaks gets, the Authentication-Results
field in the delivered message, the folder it lands in, and `appliance status`.
The DNS outage test runs last (it stops the DNS server for a while).
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import json
import re
import uuid

import pytest

from tests.internet.world import World

ALICE = "alice@example.test"
OUR_ID = "mx.example.test"

pytestmark = [pytest.mark.peers, pytest.mark.root]


def message(sender: str, subject: str, body: str = "Hello from outside.\r\n", extra: str = "") -> tuple[bytes, str]:
    marker = uuid.uuid4().hex
    text = (f"From: <{sender}>\r\nTo: <{ALICE}>\r\nSubject: {subject}\r\nDate: {email.utils.formatdate()}\r\n"
            f"Message-ID: <{marker}@outside.test>\r\n{extra}\r\n{body}")
    return text.encode(), marker


def our_results(data: bytes) -> str:
    """The one Authentication-Results field with our authserv-id, unfolded."""
    msg = email.message_from_bytes(data, policy=email.policy.compat32)
    ours = [re.sub(r"\s+", " ", str(v)).strip() for v in msg.get_all("Authentication-Results", [])
            if str(v).strip().lower().startswith(OUR_ID)]
    assert len(ours) == 1, f"expected one Authentication-Results of ours, got {ours}"
    return ours[0]


def results_of(ar: str) -> dict[str, str]:
    """method -> result of an Authentication-Results value (first of each method)."""
    out: dict[str, str] = {}
    for part in ar.split(";")[1:]:
        m = re.match(r"\s*([a-z-]+)=([a-z]+)", part)
        if m:
            out.setdefault(m.group(1), m.group(2))
    return out


# --- the done-when cases ------------------------------------------------------------------------


def test_valid_dkim_and_spf_from_postfix_is_delivered_with_pass_results(world: World) -> None:
    raw, marker = message("ann@good.test", "signed and sent by its own MTA")
    world.postfix.send("ann@good.test", ALICE, world.sign("good.test", raw))
    world.postfix.wait_log(marker, "sent")
    ar = our_results(world.find_delivered(ALICE, marker.encode()))
    assert re.search(r"dkim=pass .*spf=pass .*dmarc=pass", ar), ar
    assert "header.d=good.test" in ar and "smtp.mailfrom=ann@good.test" in ar and "header.from=good.test" in ar


def test_dmarc_failing_forgery_from_postfix_gets_550(world: World) -> None:
    raw, marker = message("ceo@bank.test", "urgent wire transfer")
    world.postfix.send("ceo@bank.test", ALICE, raw)
    line = world.postfix.wait_log(marker, "bounced")
    assert "550 5.7.1" in line and "DMARC" in line, line
    assert world.delivered_anywhere(ALICE, marker.encode()) == []


def test_hyphenated_domains_get_their_own_policy(world: World) -> None:
    forged, marker = message("ceo@my-bank.test", "forged, hyphenated")
    out = world.swaks("client", "ceo@my-bank.test", ALICE, forged)
    assert "550 5.7.1" in out and "my-bank.test" in out, out
    assert world.delivered_anywhere(ALICE, marker.encode()) == []
    good, marker = message("eve@good-mail.test", "fine, hyphenated")
    assert "250 2.0.0 Ok: queued" in world.swaks("client", "eve@good-mail.test", ALICE, good)
    got = results_of(our_results(world.find_delivered(ALICE, marker.encode())))
    assert (got["spf"], got["dmarc"]) == ("pass", "pass")


# --- SPF ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("sender", "spf", "dmarc", "folder"), [
    ("ann@good.test", "pass", "pass", ""),
    ("bob@fail.test", "fail", "none", "Junk"),  # SPF fail and no DMARC policy: Junk
    ("carl@soft.test", "softfail", "none", ""),
])
def test_spf_results(world: World, sender: str, spf: str, dmarc: str, folder: str) -> None:
    raw, marker = message(sender, f"spf {spf}")
    out = world.swaks("client", sender, ALICE, raw)
    assert "250 2.0.0 Ok: queued" in out, out
    data = world.find_delivered(ALICE, marker.encode(), folder)
    got = results_of(our_results(data))
    assert (got["spf"], got["dmarc"], got["dkim"]) == (spf, dmarc, "none")
    if not folder:
        assert b"X-Appliance-Junk" not in data


# --- DKIM ---------------------------------------------------------------------------------------


def test_dkim_valid(world: World) -> None:
    raw, marker = message("ann@good.test", "dkim valid")
    out = world.swaks("client", "ann@good.test", ALICE, world.sign("good.test", raw))
    assert "250 2.0.0 Ok: queued" in out, out
    ar = our_results(world.find_delivered(ALICE, marker.encode()))
    assert results_of(ar)["dkim"] == "pass" and "header.d=good.test" in ar and "header.s=s1" in ar


def test_dkim_broken_body_fails_and_spf_still_carries_dmarc(world: World) -> None:
    raw, marker = message("ann@good.test", "dkim broken body", body="Pay 10 EUR.\r\n")
    signed = world.sign("good.test", raw).replace(b"Pay 10 EUR.", b"Pay 9000 EUR.")
    out = world.swaks("client", "ann@good.test", ALICE, signed)
    assert "250 2.0.0 Ok: queued" in out, out
    got = results_of(our_results(world.find_delivered(ALICE, marker.encode())))
    assert (got["dkim"], got["spf"], got["dmarc"]) == ("fail", "pass", "pass")


def test_dkim_missing_and_a_forged_result_of_ours_is_removed(world: World) -> None:
    forged = f"Authentication-Results: {OUR_ID}; dkim=pass header.d=good.test; dmarc=pass\r\n"
    other = "Authentication-Results: mx.elsewhere.test; spf=pass smtp.mailfrom=ann@good.test\r\n"
    raw, marker = message("ann@good.test", "no signature", extra=forged + other + "X-Appliance-Junk: no\r\n")
    out = world.swaks("client", "ann@good.test", ALICE, raw)
    assert "250 2.0.0 Ok: queued" in out, out
    data = world.find_delivered(ALICE, marker.encode())  # X-Appliance-Junk from a client is not obeyed
    got = results_of(our_results(data))  # exactly one of ours: the forged one is gone
    assert got["dkim"] == "none" and got["spf"] == "pass"
    assert b"mx.elsewhere.test; spf=pass" in data  # another ADMD's field is theirs to keep
    assert b"X-Appliance-Junk" not in data


# --- DMARC and ARC ------------------------------------------------------------------------------


def test_dmarc_quarantine_is_delivered_into_junk(world: World) -> None:
    raw, marker = message("deals@shop.test", "cheap watches")
    out = world.swaks("client", "deals@shop.test", ALICE, raw)
    assert "250 2.0.0 Ok: queued" in out, out
    data = world.find_delivered(ALICE, marker.encode(), "Junk")
    got = results_of(our_results(data))
    assert (got["dmarc"], got["spf"]) == ("fail", "fail")
    assert world.delivered_anywhere(ALICE, marker.encode()) == [p for p in world.maildir(ALICE, "Junk").iterdir()
                                                                if marker.encode() in p.read_bytes()]


def _forward(world: World, sealer: str) -> tuple[bytes, str]:
    """A message of orig.test (p=reject), signed by orig.test, changed and ARC-sealed by the list SEALER."""
    raw, marker = message("news@orig.test", "weekly news", body="The news.\r\n")
    signed = world.sign("orig.test", raw)
    # The list changes the subject and adds a footer: the author's signature no longer verifies.
    changed = signed.replace(b"Subject: weekly news", b"Subject: [list] weekly news") + b"-- \r\nlist footer\r\n"
    sealed = world.arc_seal(sealer, changed, "dkim=pass header.d=orig.test; spf=pass smtp.mailfrom=news@orig.test")
    return sealed, marker


def test_arc_sealed_forward_from_a_trusted_list_is_delivered(world: World) -> None:
    sealed, marker = _forward(world, "list.test")
    out = world.swaks("client", "bounce@list.test", ALICE, sealed, helo="mail.list.test")
    assert "250 2.0.0 Ok: queued" in out, out
    got = results_of(our_results(world.find_delivered(ALICE, marker.encode())))
    assert (got["arc"], got["dmarc"], got["dkim"], got["spf"]) == ("pass", "fail", "fail", "pass")


def test_arc_seal_of_an_untrusted_forwarder_does_not_save_a_dmarc_reject(world: World) -> None:
    sealed, marker = _forward(world, "evil.test")
    out = world.swaks("client", "bounce@evil.test", ALICE, sealed, helo="mail.evil.test")
    assert "550 5.7.1" in out and "DMARC" in out, out
    assert world.delivered_anywhere(ALICE, marker.encode()) == []


# --- who may send what --------------------------------------------------------------------------


def test_a_client_on_the_block_list_is_refused(world: World) -> None:
    raw, _ = message("ann@good.test", "from a listed host")
    out = world.swaks("listed", "ann@good.test", ALICE, raw)
    assert "554 5.7.1" in out and "dnsbl.test" in out, out


def test_outsiders_may_not_relay(world: World) -> None:
    raw, _ = message("ann@good.test", "relay attempt")
    out = world.swaks("client", "ann@good.test", "someone@elsewhere.test", raw, quit_after="RCPT")
    assert "550 5.7.1 Relaying denied" in out, out


def test_members_are_not_verified(world: World) -> None:
    # The box's own address is the dev registry's member relay: its mail is vouched for by the registry.
    raw, marker = message("ceo@bank.test", "member mail", extra=f"Authentication-Results: {OUR_ID}; dkim=pass\r\n")
    out = world.swaks("box", "ceo@bank.test", ALICE, raw)
    assert "250 2.0.0 Ok: queued" in out, out
    data = world.find_delivered(ALICE, marker.encode())
    assert f"Authentication-Results: {OUR_ID}".encode() not in data  # nothing added; the forged one removed


def test_status_shows_the_mode_and_the_counts(world: World) -> None:
    good, marker = message("ann@good.test", "counted")
    assert "250 2.0.0 Ok: queued" in world.swaks("client", "ann@good.test", ALICE, world.sign("good.test", good))
    world.find_delivered(ALICE, marker.encode())
    forged, _ = message("ceo@bank.test", "counted forgery")
    assert "550 5.7.1" in world.swaks("client", "ceo@bank.test", ALICE, forged)
    r = world.cli("status", "--json")
    st = json.loads(r.stdout)
    inbound = st["inbound"]
    assert inbound["outsiders"] == "verify"
    counts = inbound["counts"]
    assert counts["spf"]["pass"] >= 1 and counts["dkim"]["pass"] >= 1 and counts["action"]["reject"] >= 1
    text = world.cli("status").stdout
    assert "inbound: outsiders verified" in text and "spf" in text


# --- last: a DNS outage -------------------------------------------------------------------------


def test_dns_outage_gives_451_and_nothing_is_lost(world: World) -> None:
    raw, marker = message("ann@late.test", "sent while DNS is down")
    signed = world.sign("late.test", raw)
    world.knot.pause()
    try:
        out = world.swaks("client", "ann@late.test", ALICE, signed)
        assert "451 4.4.3" in out, out
        world.postfix.send("ann@late.test", ALICE, signed)
        line = world.postfix.wait_log(marker, "deferred")
        assert "451 4.4.3" in line, line
    finally:
        world.knot.resume()
    assert world.delivered_anywhere(ALICE, marker.encode()) == []
