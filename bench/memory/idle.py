"""Idle memory of a whole development box, per process, and the machine's load.

    .venv/bin/python -m bench.memory.idle [--window 40] [--out results.json]
    make bench-memory

Starts a development box in a temporary directory (`appliance init --dev`, one
user, `appliance up`: supervisord, relay, access, registry_sync, the console
(a development box turns [listeners.console] on) and the watchdog event listener), waits until it is idle (every listener answers, the
first registry round is done, and the box's processes together use under 2% of
a core for 2 s, or --settle seconds have passed), then samples every process
each half second for --window seconds. A development box polls its registry
every 30 s, so the default window sees one round; registry_sync counts its
round's child process while it runs.

For each process it reports the RSS and PSS (/proc/PID/smaps_rollup: shared
pages divided among the processes that share them) as the median over the
window (the idle figure) and the highest sample, then the total. Issue 19's
target is an idle total of at most 120 MB RSS. It also prints the load average
before the box starts and after the window, and the CPU time the box used
during the window (what idling costs).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from appliance import supervision
from bench.imap.procstat import cpu_seconds, load_average, pss_bytes, rss_bytes, tree
from tests.helpers.box import Box, make_box

PROCESSES = ("supervisord", "relay", "access", "registry_sync", "console", "watchdog")
SAMPLE_EVERY = 0.5
MB = 1024 * 1024
TARGET_RSS_MB = 120


def box_pids(box: Box) -> dict[str, list[int]]:
    """Each process of the box by name: supervisord alone; each program with its children."""
    cfg = box.cfg
    sup = supervision.running_pid(cfg)
    info = supervision.process_info(cfg) or {}
    out: dict[str, list[int]] = {"supervisord": [sup] if sup else []}
    for name in PROCESSES[1:]:
        pid = int((info.get(name) or {}).get("pid") or 0)
        out[name] = tree(pid) if pid else []
    return out


def wait_idle(box: Box, settle: float) -> float:
    """Wait for the first registry round, then for the box to go quiet; seconds waited."""
    start = time.monotonic()
    state = box.cfg.registry_dir / "state.json"
    while not state.exists() and time.monotonic() - start < settle:
        time.sleep(0.2)
    while time.monotonic() - start < settle:
        pids = [p for ps in box_pids(box).values() for p in ps]
        before = cpu_seconds(pids)
        time.sleep(2.0)
        if cpu_seconds(pids) - before < 0.04:  # under 2% of one core over 2 s
            break
    return time.monotonic() - start


def _stat(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/stat").read_text()
    return raw[raw.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses


def box_cpu(pids: dict[str, list[int]], main: set[int]) -> float:
    """CPU seconds of the box so far: the long-lived processes MAIN with their reaped children
    (cutime + cstime: a registry round that ended), plus every other live process (a round running now)."""
    total = 0
    for pid in {p for ps in pids.values() for p in ps} | main:
        try:
            f = _stat(pid)
        except OSError:
            continue
        total += int(f[11]) + int(f[12])  # utime, stime (fields 14, 15 of proc(5))
        if pid in main:
            total += int(f[13]) + int(f[14])  # cutime, cstime (fields 16, 17)
    return total / os.sysconf("SC_CLK_TCK")


def sample(box: Box, window: float) -> tuple[list[dict[str, tuple[int, int]]], float]:
    """Samples of {process: (rss, pss)} over WINDOW seconds, and the box's CPU seconds meanwhile."""
    pids = box_pids(box)
    main = {ps[0] for ps in pids.values() if ps}
    cpu0 = box_cpu(pids, main)
    samples = []
    end = time.monotonic() + window
    while time.monotonic() < end:
        pids = box_pids(box)
        samples.append({name: (rss_bytes(ps), pss_bytes(ps)) for name, ps in pids.items()})
        time.sleep(SAMPLE_EVERY)
    return samples, box_cpu(box_pids(box), main) - cpu0


def summarise(samples: list[dict[str, tuple[int, int]]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name in (*PROCESSES, "total"):
        if name == "total":
            rss = [sum(s[n][0] for n in PROCESSES) for s in samples]
            pss = [sum(s[n][1] for n in PROCESSES) for s in samples]
        else:
            rss = [s[name][0] for s in samples]
            pss = [s[name][1] for s in samples]
        out[name] = {"rss_mb": statistics.median(rss) / MB, "pss_mb": statistics.median(pss) / MB,
                     "rss_max_mb": max(rss) / MB, "pss_max_mb": max(pss) / MB}
    return out


def table(summary: dict[str, dict[str, float]]) -> str:
    lines = ["| process | RSS MB (idle) | PSS MB (idle) | RSS MB (max) | PSS MB (max) |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for name, v in summary.items():
        label = f"**{name}**" if name == "total" else name
        lines.append(f"| {label} | {v['rss_mb']:.1f} | {v['pss_mb']:.1f} | {v['rss_max_mb']:.1f} | {v['pss_max_mb']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.memory.idle", description=__doc__.split("\n")[0])
    ap.add_argument("--window", type=float, default=40.0, help="seconds of sampling once idle (default 40)")
    ap.add_argument("--settle", type=float, default=60.0, help="longest wait for the box to go idle (default 60)")
    ap.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = ap.parse_args(argv)
    if args.window <= 0 or args.settle <= 0:
        ap.error("--window and --settle must be positive")
    load_before = load_average()
    tmp = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    try:
        box = make_box(tmp)
        box.add_user("idle")
        box.up()
        try:
            waited = wait_idle(box, args.settle)
            samples, cpu = sample(box, args.window)
        finally:
            box.down()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    load_after = load_average()
    summary = summarise(samples)
    print(table(summary))
    total = summary["total"]["rss_mb"]
    print(f"\nidle total RSS {total:.1f} MB (target <= {TARGET_RSS_MB} MB: {'met' if total <= TARGET_RSS_MB else 'NOT met'})")
    print(f"box CPU while idle: {cpu:.2f} s in {args.window:.0f} s ({100 * cpu / args.window:.1f}% of one core); "
          f"settled after {waited:.0f} s; {len(samples)} samples")
    print("load average before: {:.2f} {:.2f} {:.2f}; after: {:.2f} {:.2f} {:.2f}".format(*load_before, *load_after))
    if args.out:
        args.out.write_text(json.dumps({
            "processes": summary, "cpu_seconds": cpu, "window_seconds": args.window,
            "load_before": load_before, "load_after": load_after, "python": sys.version.split()[0],
        }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
