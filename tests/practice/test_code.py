"""The code of practice as data: every control has a probe, bad documents are refused, the operator
publishes it as a signed TUF target, and add-member refuses reports that do not qualify."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.practice import code as code_mod
from appliance.practice import report as report_mod
from appliance.practice.probes import PROBES, Result
from appliance.practice.selfcheck import CHECKS
from tests.helpers.box import run_cli
from tests.registry.conftest import make_operator


def test_every_control_has_a_probe_or_check_and_a_reason() -> None:
    code = code_mod.default_code()
    for c in code.controls:
        assert c.probe in (PROBES if c.kind == "outside" else CHECKS), c
        assert c.reference and c.description, c
    docs = (Path(__file__).parents[2] / "docs" / "practice.md").read_text()
    for c in code.controls:
        assert f"`{c.id}`" in docs, f"docs/practice.md does not list {c.id}"


@pytest.mark.parametrize(("change", "reason"), [
    ({"code_of_practice": ""}, "non-empty version"),
    ({"controls": []}, "no controls"),
    ({"controls": [{"id": "be-nice", "kind": "outside", "probe": "x", "description": "d"}]}, "no probe for it"),
    ({"controls": [{"id": "starttls", "kind": "sideways", "probe": "starttls", "description": "d"}]}, "kind"),
    ({"bounds": {"max_concurrent_connections": 50}}, "bounds must give"),
    ({"bounds": {**code_mod.BOUNDS, "max_concurrent_connections": -1}}, "positive number"),
])
def test_bad_code_documents_are_refused(change: dict[str, object], reason: str) -> None:
    with pytest.raises(code_mod.CodeError, match=reason):
        code_mod.parse({**code_mod.default_document(), **change})


def test_the_code_is_published_signed_and_a_broken_one_never_is(tmp_path: Path) -> None:
    op = make_operator(tmp_path)
    targets = json.loads((op.public / "metadata" / "targets.json").read_text())["signed"]["targets"]
    assert set(targets) == {"registry.json", "practice.json"}
    digest = targets["practice.json"]["hashes"]["sha256"]
    published = json.loads((op.public / "targets" / f"{digest}.practice.json").read_text())
    assert published == code_mod.default_document()
    assert op.draft()["code_of_practice"] == code_mod.VERSION

    before = (op.public / "metadata" / "timestamp.json").read_bytes()
    (op.repo_dir / "practice.json").write_text(json.dumps({**code_mod.default_document(), "controls": []}))
    rc, _, err = op.cli("publish", check=False)
    assert rc == 1 and "practice.json: no controls" in err, err
    assert (op.public / "metadata" / "timestamp.json").read_bytes() == before

    out = run_cli(None, "practice", "show").stdout
    assert all(c["id"] in out for c in code_mod.CONTROLS), out


def _report(tmp: Path, name: str, **change: object) -> Path:
    code = code_mod.default_code()
    results = [Result(c, "pass", "evidence") for c in code.ids("outside")]
    rep = report_mod.make("probe", code.version, "mx.cand.test:25", None, results, {"domain": "cand.test"})
    rep.update(change)
    p = tmp / name
    p.write_text(json.dumps(rep))
    return p


def test_add_member_refuses_reports_that_do_not_qualify(tmp_path: Path) -> None:
    """Reports as `practice probe --json` writes them, wrong in one respect each (real probes: test_box)."""
    op = make_operator(tmp_path)
    member = ["--id", "cand", "--domain", "cand.test", "--relay", "mx.cand.test=192.0.2.25"]
    cases = {
        "no probe report": [],
        "not a JSON report": ["--probe-report", str(tmp_path / "missing.json")],
        "probed mx.other.test:25": ["--probe-report", str(_report(tmp_path, "other.json", target="mx.other.test:25"))],
        "code of practice '2019-1'": ["--probe-report", str(_report(tmp_path, "old.json", code_of_practice="2019-1"))],
        "older than 7 days": ["--probe-report", str(_report(tmp_path, "stale.json", date="2020-01-01T00:00:00Z"))],
        "does not cover": ["--probe-report", str(_report(tmp_path, "partial.json", results=[]))],
        "probed domain 'x.test'": ["--probe-report", str(_report(tmp_path, "dom.json", observed={"domain": "x.test"}))],
        "not both": ["--without-probe", "--probe-report", str(_report(tmp_path, "ok.json"))],
    }
    (tmp_path / "missing.json").write_text("{")
    for reason, extra in cases.items():
        rc, _, err = op.cli("add-member", *member, *extra, check=False)
        assert rc == 1 and reason in err, (reason, err)
        assert not op.draft()["members"]
    op.cli("add-member", *member, "--probe-report", str(tmp_path / "ok.json"))
    assert op.draft()["members"][0]["practice"]["report_sha256"] == report_mod.digest(
        json.loads((tmp_path / "ok.json").read_text()))
