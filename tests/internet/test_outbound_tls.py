"""Outbound to the Internet that cannot be downgraded: DANE, MTA-STS and TLS-RPT, against real peers.

What a user sees: whether the destination's Postfix got the message and over TLS (its log),
what a STARTTLS-less smtp-sink got, the reason `appliance queue show` gives for a message
that stays queued, and the TLS-RPT report that arrives by mail. DNS is knot's signed zone,
validated by unbound (tests/internet/outbound_world.py).
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import gzip
import json
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.internet.outbound_world import TLSRPT_RUA, OutWorld, build
from tests.internet.world import wait_for

pytestmark = [pytest.mark.peers, pytest.mark.root]


@pytest.fixture(scope="module")
def ow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OutWorld]:
    for tool in ("ip", "ss", "swaks", "knotd", "keymgr", "unbound", "unbound-checkconf", "postfix", "smtp-sink"):
        if shutil.which(tool) is None:
            pytest.fail(f"missing test peer {tool}: run `make deps-debian` (scripts/peercheck.py)")
    w = build(tmp_path_factory.mktemp("outbound"))
    yield w
    left = w.teardown()
    assert not left, f"teardown left things behind: {left}"


def send(ow: OutWorld, rcpt: str) -> tuple[str, str]:
    """Submit a message for RCPT; (marker, queue id)."""
    marker = uuid.uuid4().hex
    out = ow.submit(rcpt, marker)
    m = re.search(r"<~\s+250 [\d.]+ .*queued as (\S+)", out)
    assert m, f"submission not accepted:\n{out}"
    return marker, m.group(1)


def tls_delivery(ow: OutWorld, marker: str) -> str:
    """The destination Postfix's TLS line for the session that carried MARKER (waits for it)."""
    def find() -> str | None:
        log = ow.postfix_log().splitlines()
        qids = {ln.split(": ")[1] for ln in log if f"message-id=<{marker}@example.test>" in ln}
        pids = {m.group(1) for ln in log for q in qids if f" {q}: client=" in ln
                and (m := re.search(r"postfix/smtpd\[(\d+)\]", ln))}
        tls = [ln for ln in log for p in pids if f"postfix/smtpd[{p}]:" in ln and "TLS connection established" in ln]
        return tls[-1] if tls else None
    try:
        return wait_for(f"{marker} at the destination Postfix", find, 60)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nrelay:\n{ow.procs['relay'].text()[-3000:]}\n"
                             f"postfix:\n{ow.postfix_log()[-2000:]}") from None


def deferred_reason(ow: OutWorld, qid: str) -> str:
    """The reason `appliance queue show` gives for the message's recipient (waits for the first attempt)."""
    def find() -> str | None:
        r = ow.cli("queue", "show", qid, "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        rcpt = json.loads(r.stdout)["recipients"][0]
        assert rcpt["state"] == "pending", rcpt
        return rcpt["detail"] or None
    reason = wait_for(f"a deferral reason for {qid}", find, 60)
    shown = ow.cli("queue", "show", qid).stdout
    assert reason[:60] in shown, shown  # the human-readable form shows it too
    return reason


def never_arrived(ow: OutWorld, marker: str) -> None:
    assert marker not in ow.postfix_log()
    assert marker.encode() not in ow.sink_got()
    assert "fatal" not in ow.procs["sink"].text()  # the sink was up and would have taken it


# --- DANE (RFC 7672) ---------------------------------------------------------------------------


def test_matching_tlsa_dane_ee_is_delivered_over_tls(ow: OutWorld) -> None:
    marker, _ = send(ow, "bob@dane-good.test")
    assert "TLSv1" in tls_delivery(ow, marker)


def test_matching_tlsa_dane_ta_is_delivered_over_tls(ow: OutWorld) -> None:
    marker, _ = send(ow, "bob@dane-ta.test")
    assert "TLSv1" in tls_delivery(ow, marker)


def test_tlsa_that_does_not_match_is_deferred_and_never_sent(ow: OutWorld) -> None:
    marker, qid = send(ow, "bob@dane-bad.test")
    reason = deferred_reason(ow, qid)
    assert reason.startswith("4.7.5") and "TLSA" in reason and "mx2.test" in reason, reason
    never_arrived(ow, marker)


def test_dane_destination_without_starttls_is_deferred(ow: OutWorld) -> None:
    marker, qid = send(ow, "bob@dane-strip.test")
    reason = deferred_reason(ow, qid)
    assert reason.startswith("4.7.4") and "STARTTLS" in reason and "DANE" in reason, reason
    never_arrived(ow, marker)


# --- MTA-STS (RFC 8461) ------------------------------------------------------------------------


def test_valid_mta_sts_enforce_is_delivered_over_tls(ow: OutWorld) -> None:
    marker, _ = send(ow, "bob@sts-good.test")
    assert "TLSv1" in tls_delivery(ow, marker)


def test_mta_sts_enforce_with_wrong_certificate_is_deferred(ow: OutWorld) -> None:
    marker, qid = send(ow, "bob@sts-bad.test")
    reason = deferred_reason(ow, qid)
    assert reason.startswith("4.7.5") and "MTA-STS enforce" in reason and "mx4.test" in reason, reason
    never_arrived(ow, marker)


def test_mta_sts_destination_without_starttls_is_deferred(ow: OutWorld) -> None:
    marker, qid = send(ow, "bob@sts-strip.test")
    reason = deferred_reason(ow, qid)
    assert reason.startswith("4.7.4") and "MTA-STS" in reason, reason
    never_arrived(ow, marker)


def test_mta_sts_testing_only_reports(ow: OutWorld) -> None:
    # The same wrong certificate as sts-bad.test, but the policy says `testing`: delivered.
    marker, _ = send(ow, "bob@sts-testing.test")
    assert "TLSv1" in tls_delivery(ow, marker)


def test_without_any_policy_plaintext_is_still_allowed(ow: OutWorld) -> None:
    # The control case for the deferrals above: the same sink takes mail when no policy applies.
    marker, _ = send(ow, "bob@plain.test")
    wait_for("the message in smtp-sink's dump", lambda: marker.encode() in ow.sink_got(), 60)


# --- TLS-RPT (RFC 8460) ------------------------------------------------------------------------


def _report_parts(path: Path) -> tuple[email.message.Message, dict]:
    msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    att = [p for p in msg.walk() if p.get_content_type() == "application/tlsrpt+gzip"]
    assert len(att) == 1, msg
    return msg, json.loads(gzip.decompress(att[0].get_payload(decode=True)))


def test_tls_rpt_report_is_mailed_to_the_rua(ow: OutWorld) -> None:
    # Sessions happened above (dane-good succeeded, dane-bad failed); today's report, sent now.
    send(ow, "bob@dane-bad.test")  # one more failure, in case this test runs alone
    marker, _ = send(ow, "bob@dane-good.test")
    tls_delivery(ow, marker)
    today = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    r = ow.cli("tlsrpt", "send", "--date", today)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "dane-bad.test" in r.stdout and TLSRPT_RUA in r.stdout, r.stdout
    inbox = Path(load_mail_dir(ow)) / "example.test" / "tlsrpt" / "new"
    reports = wait_for("two reports delivered", lambda: len(list(inbox.glob("*"))) >= 2 and list(inbox.glob("*")), 60)
    by_domain = {}
    for p in reports:
        msg, rep = _report_parts(p)
        assert msg["TLS-Report-Submitter"] == "mx.example.test"
        assert 'report-type="tlsrpt"' in msg["Content-Type"]
        by_domain[msg["TLS-Report-Domain"]] = rep
    bad = by_domain["dane-bad.test"]["policies"][0]
    assert bad["policy"]["policy-type"] == "tlsa" and bad["policy"]["mx-host"] == "mx2.test"
    assert bad["summary"]["total-failure-session-count"] >= 1
    assert bad["failure-details"][0]["result-type"] == "validation-failure"
    good = by_domain["dane-good.test"]["policies"][0]
    assert good["summary"]["total-successful-session-count"] >= 1
    assert good["summary"]["total-failure-session-count"] == 0
    assert by_domain["dane-good.test"]["date-range"]["start-datetime"] == f"{today}T00:00:00Z"
    # Sent once per day and address: a second run sends nothing new.
    again = ow.cli("tlsrpt", "send", "--date", today)
    assert again.returncode == 0 and "already sent" in again.stdout, again.stdout


def load_mail_dir(ow: OutWorld) -> str:
    from appliance.config import load

    return load(ow.config_file).paths.mail_dir


def test_status_shows_what_is_enforced_and_todays_results(ow: OutWorld) -> None:
    send(ow, "bob@dane-bad.test")
    marker, _ = send(ow, "bob@dane-good.test")
    tls_delivery(ow, marker)
    r = ow.cli("status")
    assert r.returncode in (0, 1), r.stdout + r.stderr  # 1: supervisor is not running (the relay runs alone)
    assert "outbound: DNS MX (relay.outside = mx), enforced: DANE, MTA-STS, TLS-RPT counts" in r.stdout, r.stdout
    m = re.search(r"today tlsa sessions ok=(\d+) failed=(\d+)", r.stdout)
    assert m and int(m.group(1)) >= 1 and int(m.group(2)) >= 1, r.stdout


def test_mail_to_a_consortium_member_still_goes_the_pinned_way(ow: OutWorld) -> None:
    # member.test's MX in DNS is the plaintext sink; the registry pins its relay (the destination Postfix).
    marker, _ = send(ow, "bob@member.test")
    assert "TLSv1" in tls_delivery(ow, marker)
    assert marker.encode() not in ow.sink_got()


def test_tlsa_lookup_that_fails_validation_is_deferred_never_plaintext(ow: OutWorld) -> None:
    # RFC 7672 2.2: a bogus TLSA answer (unbound: SERVFAIL) makes the MX host unusable.
    marker, qid = send(ow, "bob@dane-bogus.test")
    reason = deferred_reason(ow, qid)
    assert reason.startswith("4.7.5") and "DANE" in reason and "_25._tcp.mx5.test" in reason, reason
    never_arrived(ow, marker)
