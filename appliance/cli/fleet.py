"""`appliance fleet status [--json]`: every box's `appliance status`, asked through the salt-master.

Run on the salt-master (docs/fleet.md "Salt master and a 3-box layout"). It runs
`salt TARGET cmd.run_all 'appliance status --json' --out=json --static` with the
master's own `salt` command, so what it shows is what each minion answered now,
and prints one line per box. A minion that did not answer is a line with an
alarm, never left out. No box config is read: the master may not be a mail box.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from appliance.cli import CommandError

# Where states/appliance/saltmaster.sls puts Salt and the master's config on a box.
SALT_PREFIX = Path("/opt/appliance/salt")
FLEET_CONFIG_DIR = SALT_PREFIX / "etc-fleet"
# What a minion runs: the appliance venv is not on the minion's PATH.
REMOTE_STATUS = "/opt/appliance/venv/bin/appliance -c /etc/appliance/appliance.toml status --json"


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("fleet", help="the boxes driven by this salt-master")
    fsub = p.add_subparsers(dest="fleet_command", metavar="SUBCOMMAND", required=True)
    s = fsub.add_parser("status", help="one line per box: name, member id, services, alarms (through Salt)")
    s.add_argument("--json", action="store_true", help="one JSON object: {minion id: summary}")
    s.add_argument("--target", default="*", help="Salt target (glob of minion ids; default: every box)")
    s.add_argument("--salt", default=None,
                   help=f"the salt command (default: `salt` on PATH, else {SALT_PREFIX}/bin/salt)")
    s.add_argument("--salt-config-dir", default=os.environ.get("APPLIANCE_SALT_CONFIG_DIR"),
                   help=f"the master's config dir (default: $APPLIANCE_SALT_CONFIG_DIR, else {FLEET_CONFIG_DIR} "
                        "when it holds a master file, else Salt's /etc/salt)")
    s.add_argument("--timeout", type=int, default=30, help="seconds to wait for the minions (default 30)")
    s.add_argument("--remote-command", default=REMOTE_STATUS, help="the status command each minion runs")
    s.set_defaults(func=cmd_fleet_status)


def _salt_command(args: argparse.Namespace) -> list[str]:
    salt = args.salt or shutil.which("salt") or str(SALT_PREFIX / "bin" / "salt")
    if not Path(salt).is_file():
        raise CommandError(f"no salt command ({salt}): run this on the salt-master (states/appliance/saltmaster.sls)")
    cmd = [salt]
    config_dir = args.salt_config_dir or (str(FLEET_CONFIG_DIR) if (FLEET_CONFIG_DIR / "master").is_file() else None)
    if config_dir:
        cmd.append(f"--config-dir={config_dir}")
    return cmd


def ask_minions(args: argparse.Namespace) -> dict[str, Any]:
    """Each minion's answer to REMOTE_STATUS: {id: cmd.run_all's dict, or Salt's message when it did not answer}."""
    if args.timeout < 1:
        raise CommandError("--timeout must be at least 1 second")
    cmd = [*_salt_command(args), "--out=json", "--static", f"--timeout={args.timeout}",
           args.target, "cmd.run_all", args.remote_command]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout + 60)
    except subprocess.TimeoutExpired as exc:
        raise CommandError(f"no salt-master reachable: no answer within {args.timeout + 60}s") from exc
    out = proc.stdout.strip()
    try:
        data = json.loads(out) if out else None
    except json.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        # The master is not running, its socket is not ours, or no minion matched: Salt says which on stderr/stdout.
        why = (proc.stderr.strip() or out or f"salt exited {proc.returncode}").splitlines()
        raise CommandError(f"no salt-master reachable (or no minion matched {args.target!r}): {why[-1][:300]}")
    return data


def summarise(minion: str, answer: Any) -> dict[str, Any]:
    """One box's line: its name, member id, role, each service's state and every alarm `status` reported."""
    row: dict[str, Any] = {"minion": minion, "hostname": None, "member_id": None, "role": None,
                           "services": {}, "alarms": [], "ok": False}
    if not isinstance(answer, dict) or "stdout" not in answer:
        row["alarms"].append(f"no answer through Salt: {str(answer)[:200]}")
        return row
    try:
        st = json.loads(answer["stdout"])
    except (TypeError, json.JSONDecodeError):
        err = (answer.get("stderr") or answer.get("stdout") or "").strip().splitlines()
        row["alarms"].append(f"`appliance status` failed (exit {answer.get('retcode')}): {(err or [''])[-1][:200]}")
        return row
    box = st.get("box") or {}
    row.update(hostname=box.get("hostname"), member_id=box.get("member_id"), role=box.get("role"))
    for s in st.get("services") or []:
        row["services"][s["name"]] = s.get("state")
        if s.get("alarm"):
            row["alarms"].append(f"{s['name']}: {s['alarm']}")
    if st.get("supervisor") != "running":
        row["alarms"].append(f"supervisor: {st.get('supervisor')}")
    for part in ("watchdog", "registry", "accounts", "limiter"):
        alarm = (st.get(part) or {}).get("alarm")
        if alarm:
            row["alarms"].append(f"{part}: {alarm}")
    # `appliance status` exits 0 only when every service runs and nothing alarms (docs/status.md).
    row["ok"] = answer.get("retcode") == 0 and not row["alarms"]
    return row


def render_line(row: dict[str, Any]) -> str:
    services = ", ".join(f"{name} {state}" for name, state in sorted(row["services"].items())) or "-"
    alarms = "; ".join(row["alarms"]) or "none"
    return (f"{row['minion']:<16} {row['hostname'] or '-':<24} member {row['member_id'] or '-':<14} "
            f"services: {services}  alarms: {alarms}")


def cmd_fleet_status(args: argparse.Namespace) -> int:
    answers = ask_minions(args)
    rows = [summarise(m, answers[m]) for m in sorted(answers)]
    if args.json:
        print(json.dumps({r["minion"]: r for r in rows}, indent=2, sort_keys=True))
    else:
        for r in rows:
            print(render_line(r))
    # Like `appliance status`: non-zero when any box needs attention.
    return 0 if rows and all(r["ok"] for r in rows) else 1
