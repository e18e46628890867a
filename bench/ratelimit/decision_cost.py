"""Cost of one rate-limit decision, in process (target: under 20 µs per decision).

Run: ``.venv/bin/python -m bench.ratelimit.decision_cost [--keys 10000] [--rounds 200000]``

Measures, with the real clocks and a real SQLite file in a temp dir:
- ``check_message``: MAIL FROM decision (GCRA peek + daily quota from the cache);
- ``check_recipient``: RCPT TO decision;
- ``reserve+cancel``: the atomic take at end of DATA (and its give-back);
- ``connection``: connection_opened + connection_closed (rate + concurrency);
- ``auth_check``: AUTH/XAUTHCHECK decision;
- ``commit``: the daily-quota write per accepted message (SQLite, off the decision path);
- ``pipeline on_mail``: the Limits policy check's MAIL hook as the relay calls it.
Keys are spread over --keys accounts / IPs so the dicts are realistically sized.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from appliance.accounts import Account
from appliance.ratelimit import runtime
from tests.ratelimit.conftest import make_config


def measure(name: str, fn: Callable[[int], object], rounds: int, repeats: int = 5) -> float:
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(rounds):
            fn(i)
        samples.append((time.perf_counter() - t0) / rounds * 1e6)
    best, med = min(samples), statistics.median(samples)
    print(f"{name:<22} median {med:7.2f} µs   best {best:7.2f} µs   ({rounds} × {repeats})")
    return med


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=200_000)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = make_config(
            Path(tmp),
            limits={"classes": {"default": {"messages_per_minute": 1e6, "burst": 1_000_000, "per_day": 10**9}},
                    "connection_rate_per_ip": 1e6, "connection_burst_per_ip": 1_000_000,
                    "connections_per_ip": 1_000_000, "auth_failures_per_ip": 1_000_000},
        )
        rt = runtime.build(cfg)
        runtime.install(cfg, rt)  # the Limits policy check below uses this same limiter
        lim = rt.limiter
        accounts = [Account(f"user{i}@example.test") for i in range(args.keys)]
        senders = [lim.customer(a) for a in accounts]
        ips = [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(args.keys)]
        k = args.keys
        for s in senders:  # warm the daily-quota cache (first touch reads SQLite once per key per day)
            lim.check_message(s)

        results = {
            "check_message": measure("check_message", lambda i: lim.check_message(senders[i % k]), args.rounds),
            "check_recipient": measure("check_recipient", lambda i: lim.check_recipient(senders[i % k], 3),
                                       args.rounds),
            "reserve+cancel": measure(
                "reserve+cancel",
                lambda i: (lim.reserve(senders[i % k], 3), lim.cancel(senders[i % k], 3)), args.rounds),
            "connection": measure(
                "connection open+close",
                lambda i: (lim.connection_opened(ips[i % k]), lim.connection_closed(ips[i % k])), args.rounds),
            "auth_check": measure("auth_check", lambda i: lim.auth_check(ips[i % k]), args.rounds),
            "customer()": measure("customer() lookup", lambda i: lim.customer(accounts[i % k]), args.rounds),
        }
        measure("commit (SQLite write)", lambda i: lim.commit(senders[i % k]), max(1, args.rounds // 20), 3)

        from appliance.accounts import AccountStore
        from appliance.policy.limits import Limits
        from appliance.policy.pipeline import PolicyContext
        from appliance.policy.session import Session

        check = Limits(PolicyContext(cfg, AccountStore(Path(tmp) / "accounts.sqlite3")))
        sessions = []
        for a in accounts[: min(k, 1000)]:
            s = Session(listener="submission", client_ip="10.0.0.1", tls=True)
            s.login, s.account = a.address, a
            sessions.append(s)
        n = len(sessions)
        results["pipeline on_mail"] = measure(
            "Limits.on_mail", lambda i: check.on_mail(sessions[i % n], sessions[i % n].login), args.rounds)
        rt.close()
    worst = max(results.values())
    print(f"worst decision median: {worst:.2f} µs (target < 20 µs): {'OK' if worst < 20 else 'OVER TARGET'}")
    return 0 if worst < 20 else 1


if __name__ == "__main__":
    sys.exit(main())
