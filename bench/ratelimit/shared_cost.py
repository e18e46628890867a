"""Cost of one rate-limit decision with the shared limiter: Redis on TCP loopback (`state.backend = "shared"`).

Run: ``.venv/bin/python -m bench.ratelimit.shared_cost [--keys 2000] [--rounds 5000]``

Starts its own redis-server (Debian's, no persistence) on 127.0.0.1 and times every
call on its own (perf_counter around each), so the p50 and p99 include the round
trips a relay pays: one for most decisions, see docs/fleet.md "Decision cost".
Rows: ``check_message`` (GCRA peek + daily count: 2 round trips), ``check_recipient``,
``reserve`` and ``cancel`` (one script each), ``connection open+close`` (rate, lease,
release: 3), ``auth_check``, ``Limits.on_mail`` (the policy check as the relay calls it),
``pacer delay`` and ``brake record_accepted`` (known recipients + window: 2).
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from appliance.accounts import Account
from appliance.config import StateConfig
from appliance.ratelimit import runtime
from appliance.registry.model import Member, MemberLimits
from tests.fleet.redis_server import RedisServer
from tests.ratelimit.conftest import make_config


def free_port() -> int:
    # redis-server cannot be given port 0: take one the OS just handed out.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure(name: str, fn: Callable[[int], object], rounds: int) -> tuple[float, float]:
    samples = []
    for i in range(rounds):
        t0 = time.perf_counter()
        fn(i)
        samples.append((time.perf_counter() - t0) * 1e6)
    samples.sort()
    p50, p99 = samples[len(samples) // 2], samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    print(f"{name:<26} p50 {p50:8.1f} µs   p99 {p99:8.1f} µs   ({rounds} calls)")
    return p50, p99


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=2_000)
    ap.add_argument("--rounds", type=int, default=5_000)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp) / "redis", bind="127.0.0.1", port=free_port())
        server.start()
        try:
            base = make_config(
                Path(tmp),
                limits={"classes": {"default": {"messages_per_minute": 1e6, "burst": 1_000_000, "per_day": 10**9}},
                        "connection_rate_per_ip": 1e6, "connection_burst_per_ip": 1_000_000,
                        "connections_per_ip": 1_000_000, "auth_failures_per_ip": 1_000_000},
            )
            cfg = base.model_copy(update={"state": StateConfig(
                backend="shared", redis_url=server.url, postgres_url="postgresql://appliance@127.0.0.1/unused")})
            rt = runtime.build(cfg)
            runtime.install(cfg, rt)
            run(cfg, rt, args.keys, args.rounds, tmp)
            rt.close()
        finally:
            server.stop()
    return 0


def run(cfg: object, rt: runtime.LimitRuntime, keys: int, rounds: int, tmp: str) -> None:
    lim = rt.limiter
    accounts = [Account(f"user{i}@example.test") for i in range(keys)]
    senders = [lim.customer(a) for a in accounts]
    ips = [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(keys)]
    dest = Member("isp-b", "ISP B", "active", "", (), (), MemberLimits(1e6, 1_000_000, 10))
    k = keys
    print(f"shared limiter, Redis {rt.cfg.state.redis_url} (TCP loopback), {keys} keys")
    measure("check_message", lambda i: lim.check_message(senders[i % k]), rounds)
    measure("check_recipient", lambda i: lim.check_recipient(senders[i % k], 3), rounds)
    measure("reserve", lambda i: lim.reserve(senders[i % k], 3), rounds)
    measure("cancel", lambda i: lim.cancel(senders[i % k], 3), rounds)
    measure("connection open+close",
            lambda i: (lim.connection_opened(ips[i % k]), lim.connection_closed(ips[i % k])), rounds)
    measure("auth_check", lambda i: lim.auth_check(ips[i % k]), rounds)
    measure("pacer delay", lambda i: rt.pacer.delay(dest), rounds)
    measure("brake record_accepted",
            lambda i: rt.brake.record_accepted(accounts[i % k].address, [f"r{i % 50}@example.net"]), rounds)

    from appliance.accounts import AccountStore
    from appliance.policy.limits import Limits
    from appliance.policy.pipeline import PolicyContext
    from appliance.policy.session import Session

    check = Limits(PolicyContext(rt.cfg, AccountStore(Path(tmp) / "accounts.sqlite3")))
    sessions = []
    for a in accounts[: min(k, 1000)]:
        s = Session(listener="submission", client_ip="10.0.0.1", tls=True)
        s.login, s.account = a.address, a
        sessions.append(s)
    n = len(sessions)
    measure("Limits.on_mail", lambda i: check.on_mail(sessions[i % n], sessions[i % n].login), rounds)


if __name__ == "__main__":
    sys.exit(main())
