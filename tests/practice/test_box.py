"""The box itself keeps the code: it passes every outside probe, its self-check is signed with its
pinned key, and with that report the operator admits it (and refuses a candidate without one)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
import tomli_w

from appliance.devbox import free_port
from appliance.practice import report as report_mod
from appliance.practice.code import default_code
from tests.helpers.box import make_box, pids_under, run_cli
from tests.practice.peers import PROBE_MEMBER, probe, statuses
from tests.registry.conftest import make_operator, relay_running, sync_in_process

pytestmark = pytest.mark.peers


def test_the_box_passes_every_probe_and_is_admitted_with_its_report(tmp_path: Path) -> None:
    box = make_box(tmp_path, domain="a.test", host="127.0.0.2", name="a")
    repo = box.dir / "registry-repo"
    # The consortium's probe is listed in the registry, so the box lets it in on port 25 as it
    # would any member (docs/practice.md); the box's own entry pins its certificate.
    run_cli(None, "registry", "add-member", str(repo), "--without-probe", *PROBE_MEMBER)
    run_cli(None, "registry", "update-member", str(repo), "a", "--pin", str(box.cfg.tls.cert))
    run_cli(None, "registry", "publish", str(repo))
    rc, _, err = sync_in_process(box)
    assert rc == 0, err
    box.add_user("abuse")
    tester = box.add_user("tester", "tester password")
    cfg = box.cfg
    mx = f"{cfg.listeners.mx.host}:{cfg.listeners.mx.port}"
    cfg_file = box.config_file
    try:
        with relay_running(box, up=False):
            rep = probe(mx, "--member", "a", "--repo", str(repo), "--submission", str(cfg.listeners.submission.port),
                        "--account", tester, "--password-stdin", "--out", str(tmp_path / "a.json"),
                        password="tester password", check_rc=0)
        assert statuses(rep, "pass") == set(default_code().ids("outside")), rep
        ev = {r["control"]: r["evidence"] for r in rep["results"]}
        assert "550 5.7.1" in ev["no-open-relay"] and "553" in ev["no-open-relay"], ev
        assert "421 4.7.0" in ev["rate-limit"], ev
        assert "matches the registry" in ev["tls-certificate"], ev
        assert "550 5.7.1" in ev["forged-from-auth"], ev
        assert "not an end of data" in ev["no-smuggling"] or "550 5.5.2" in ev["no-smuggling"], ev

        # Inside checks: a dev box is not in DNS, so its DKIM key cannot be found published (the
        # resolver is a loopback port where nothing answers: no query leaves the machine); every
        # other inside check passes. The report is signed with the box's TLS key, pinned for member a.
        data = tomllib.loads(cfg_file.read_text())
        data.setdefault("relay", {})["resolver"] = {"nameservers": ["127.0.0.1"], "port": free_port("127.0.0.1")}
        cfg_file.write_text(tomli_w.dumps(data))
        r = run_cli(cfg_file, "practice", "self-check", "--json", check=False)
        self_rep = json.loads(r.stdout)
        assert r.returncode == 1
        assert statuses(self_rep, "fail") == {"dkim-published"}, self_rep
        assert "mail._domainkey.a.test TXT" in next(x["evidence"] for x in self_rep["results"]
                                                   if x["control"] == "dkim-published"), self_rep
        assert statuses(self_rep, "pass") == set(default_code().ids("inside")) - {"dkim-published"}, self_rep
        (tmp_path / "self.json").write_text(r.stdout)
        out = run_cli(cfg_file, "practice", "verify", str(tmp_path / "self.json"), "--repo", str(repo),
                      "--member", "a").stdout
        assert "signature valid" in out and "pinned for member a" in out, out
        tampered = dict(self_rep, results=[{**x, "status": "pass"} for x in self_rep["results"]])
        (tmp_path / "tampered.json").write_text(json.dumps(tampered))
        bad = run_cli(cfg_file, "practice", "verify", str(tmp_path / "tampered.json"), check=False)
        assert bad.returncode == 1 and "signature does not verify" in bad.stderr, bad.stderr

        # Admission at a fresh consortium: refused without a report, admitted with the passing one.
        op = make_operator(tmp_path)
        relay = ["--domain", "a.test", "--relay", f"{mx}=127.0.0.2/32", "--pin", str(cfg.tls.cert)]
        rc, _, err = op.cli("add-member", "--id", "a", *relay, check=False)
        assert rc == 1 and "refused: no probe report" in err, err
        assert not op.draft()["members"]
        op.cli("add-member", "--id", "a", *relay, "--probe-report", str(tmp_path / "a.json"))
        entry = op.draft()["members"][0]
        saved = json.loads((tmp_path / "a.json").read_text())
        assert entry["practice"]["report_sha256"] == report_mod.digest(saved)
        assert entry["practice"]["report_date"] == saved["date"]
        # The signed targets carry the code of practice next to the member list.
        op.cli("publish")
        targets = json.loads((op.public / "metadata" / "targets.json").read_text())["signed"]["targets"]
        assert set(targets) == {"registry.json", "practice.json"}
    finally:
        box.down()
        assert not pids_under(tmp_path)
