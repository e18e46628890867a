"""Concurrent logins that upgrade (rehash) the stored password, from many threads on one store.

This is how the access service uses its ``AccountStore``: every IMAP/POP login
runs ``authenticate`` in Twisted's thread pool, several at once. Each login
below finds a hash made with weaker argon2 parameters, so it rehashes (a write)
while the other threads read and write too. Every login must succeed and every
hash must end upgraded; none may fail with a SQLite threading or transaction error.
"""

from __future__ import annotations

import concurrent.futures
import sqlite3
from pathlib import Path

from argon2 import PasswordHasher

from appliance.accounts import AccountStore

PASSWORD = "correct horse battery"
ACCOUNTS = 12
THREADS = 4
WEAK = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)


def _weaken(db_path: Path, addresses: list[str]) -> None:
    with sqlite3.connect(db_path) as db:
        for a in addresses:
            db.execute("UPDATE accounts SET password = ? WHERE address = ?", (WEAK.hash(PASSWORD), a))


def test_concurrent_logins_with_rehash_all_succeed(tmp_path: Path) -> None:
    db_path = tmp_path / "accounts.sqlite3"
    setup = AccountStore(db_path)
    addresses = [setup.add(f"user{i}@example.test", PASSWORD).address for i in range(ACCOUNTS)]
    setup.close()
    store = AccountStore(db_path)  # one store, shared by the pool's threads, as Backend does
    try:
        for _round in range(2):
            _weaken(db_path, addresses)
            with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
                # Each account twice at once: two logins may race to upgrade the same hash.
                jobs = [pool.submit(store.authenticate, a, PASSWORD) for a in addresses * 2]
                results = [j.result(timeout=120) for j in jobs]  # re-raises any SQLite error
            assert [r.address if r else None for r in results] == addresses * 2
        with sqlite3.connect(db_path) as db:
            hashes = [h for (h,) in db.execute("SELECT password FROM accounts")]
        assert not any(PasswordHasher().check_needs_rehash(h) for h in hashes), "a hash was not upgraded"
        # The upgraded hashes still verify, and a wrong password is still refused.
        assert store.authenticate(addresses[0], PASSWORD) is not None
        assert store.authenticate(addresses[0], "wrong password!") is None
    finally:
        store.close()

