"""Real Postfix instances that break one control each fail exactly that control, and are not admitted."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import require
from tests.practice.peers import BROKEN, CANDIDATE_DOMAIN, candidate_postfix, probe, statuses
from tests.registry.conftest import make_operator

pytestmark = pytest.mark.peers


@pytest.mark.parametrize("broken", sorted(BROKEN))
def test_postfix_breaking_one_control_fails_exactly_that_control(broken: str, tmp_path: Path) -> None:
    require("postfix", "dovecot", "doveadm")
    with candidate_postfix(broken) as pf:
        rep = probe(f"127.0.0.1:{pf.port}", "--domain", CANDIDATE_DOMAIN, "--out", str(tmp_path / "report.json"),
                    check_rc=1)
        log = pf.log()
    failed = statuses(rep, "fail")
    assert failed == {broken}, (rep, log[-3000:])
    # No test account was given, so the authenticated From: test is reported as not run, not as passed.
    # (and with no limit at all, whether a limit would answer 5xx cannot be seen either).
    not_run = {"forged-from-auth", "no-5xx-for-limits"} if broken == "rate-limit" else {"forged-from-auth"}
    assert statuses(rep, "not-run") == not_run, rep
    evidence = next(r["evidence"] for r in rep["results"] if r["control"] == broken)
    expected = {
        "no-open-relay": "RCPT TO:<relay-test@practice-probe.invalid> -> 250",
        "no-smuggling": "250",
        "auth-tls-only": "AUTH advertised before TLS: 250",
        "rate-limit": "51 of 51 concurrent connections greeted 220",
    }[broken]
    assert expected in evidence, evidence
    # Nothing the probe sent was ever handed on: every Postfix transport here is discard, and
    # the only completed DATA (the smuggling-prone peer's) was for the candidate's own abuse@.

    # The operator cannot admit this candidate with its report.
    op = make_operator(tmp_path)
    rc, _, err = op.cli("add-member", "--id", "cand", "--domain", CANDIDATE_DOMAIN,
                        "--relay", f"127.0.0.1:{pf.port}=127.0.0.1/32", "--probe-report", str(tmp_path / "report.json"),
                        check=False)
    assert rc == 1 and "controls not passed" in err and broken in err, err
    assert not op.draft()["members"]
