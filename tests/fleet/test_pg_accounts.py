"""Shared accounts on a real PostgreSQL 15 (issue 16 items 3, 7): `appliance db migrate`, `appliance user ...`
on `state.backend = "shared"`, two boxes' configs on one database, and `appliance db export|import`.

No services run here (tests/fleet/test_pg_services.py starts them); every step is the operator's CLI.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.accounts import AccountError, AccountStore, LimitOverride
from appliance.accounts_pg import PgAccountStore
from appliance.config import load
from tests.fleet.pg_server import PgServer, running_pg
from tests.fleet.redis_server import RedisServer
from tests.helpers.box import Box, make_box

PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def pg() -> Iterator[PgServer]:
    yield from running_pg()


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The shared limiter's Redis: `user release` also resets the account's abuse-brake window there."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def shared_box(tmp: Path, pg: PgServer, db: str, name: str, redis_url: str) -> Box:
    box = make_box(tmp, name=name)
    pg.use_in(box.config_file, db, redis_url)
    return box


def pg_store(box: Box) -> PgAccountStore:
    return PgAccountStore.from_config(load(box.config_file))


def test_migrate_records_the_version_is_idempotent_and_refuses_a_newer_database(tmp_path: Path, pg: PgServer,
                                                                              redis_url: str) -> None:
    db = pg.new_database()
    box = shared_box(tmp_path, pg, db, "a", redis_url)
    # Not migrated yet: a clear refusal, not a crash and not "no accounts".
    r = box.cli("user", "list", check=False)
    assert r.returncode == 1 and "run `appliance db migrate`" in r.stderr
    r = box.cli("db", "migrate")
    assert "migrated from version 0 to 2" in r.stdout
    assert pg.psql("SELECT version, name FROM schema_version ORDER BY version", db) == "1|accounts\n2|home"
    assert "already at version 2" in box.cli("db", "migrate").stdout
    assert pg.psql("SELECT count(*) FROM schema_version", db) == "2"
    assert "schema version 2 (this code: 2)" in box.cli("db", "status").stdout
    # A database a newer appliance migrated: this code neither migrates it nor uses it.
    pg.psql("INSERT INTO schema_version(version, name) VALUES (3, 'from_the_future')", db)
    r = box.cli("db", "migrate", check=False)
    assert r.returncode == 1 and "newer than this code" in r.stderr
    r = box.cli("user", "add", f"x@{box.domain}", "--password-stdin", input=PASSWORD + "\n", check=False)
    assert r.returncode == 1 and "newer than this code" in r.stderr
    assert pg.psql("SELECT count(*) FROM accounts", db) == "0"


def test_user_commands_on_two_boxes_sharing_the_database(tmp_path: Path, pg: PgServer, redis_url: str) -> None:
    db = pg.new_database()
    a, b = shared_box(tmp_path, pg, db, "a", redis_url), shared_box(tmp_path, pg, db, "b", redis_url)
    a.cli("db", "migrate")
    alice = a.add_user("alice", PASSWORD)
    a.cli("user", "alias", "add", alice, f"al@{a.domain}")
    a.cli("user", "limits", alice, "--per-minute", "5", "--burst", "3", "--per-day", "50")
    a.cli("user", "quota", alice, "--storage", "2M", "--messages", "100")
    # Box B's config sees it at once, every field.
    listed = json.loads(b.cli("user", "list", "--json").stdout)
    assert [(x["address"], x["identities"], x["override"]) for x in listed] == [
        (alice, [f"al@{a.domain}"], {"per_minute": 5.0, "burst": 3, "per_day": 50})]
    assert listed[0]["quota"]["storage"] == 2 * 1024 * 1024 and listed[0]["quota"]["messages"] == 100
    # The same refusals as the local store (all of them: test_both_backends_answer_the_same_calls_alike).
    r = b.cli("user", "add", f"al@{a.domain}", "--password-stdin", input=PASSWORD + "\n", check=False)
    assert r.returncode == 1 and "already an alias" in r.stderr
    # Password set on B: A's store accepts the new one and not the old one.
    b.cli("user", "passwd", alice, "--password-stdin", input="a new long password\n")
    sa = pg_store(a)
    try:
        assert sa.authenticate(alice, "a new long password") is not None
        assert sa.authenticate(alice, PASSWORD) is None
        # Disabled on B: refused through A.
        b.cli("user", "disable", alice)
        assert sa.authenticate(alice, "a new long password") is None
        b.cli("user", "enable", alice)
        assert sa.authenticate(alice, "a new long password") is not None
        # Held by A's abuse brake (the store call it makes): B lists it held, and B releases it for A.
        assert sa.hold(alice, "test: 30 first-time recipients") is True
        assert "HELD (test: 30 first-time recipients)" in b.cli("user", "list").stdout
        b.cli("user", "release", alice)
        got = sa.get(alice)
        assert got is not None and not got.held
    finally:
        sa.close()
    # Nothing of it went to either box's own SQLite file.
    for box in (a, b):
        local = AccountStore(box.cfg.paths.accounts_db)
        try:
            assert local.list() == []
        finally:
            local.close()
    b.cli("user", "del", alice)
    assert a.cli("user", "list").stdout.strip() == ""


def _accounts_of(export: Path) -> list[dict[str, object]]:
    data = json.loads(export.read_text())
    return sorted(data["accounts"], key=lambda x: x["address"]), data["identities"]


def test_export_import_moves_a_box_to_shared_and_back_without_losing_an_account(tmp_path: Path, pg: PgServer,
                                                                             redis_url: str) -> None:
    db = pg.new_database()
    box = make_box(tmp_path, name="local")  # state.backend = "local"
    alice, bob, carol, admin_address = (f"{u}@{box.domain}" for u in ("alice", "bob", "carol", "admin"))
    # Filled through the store (`appliance user` on it is tested above): every kind of field set somewhere.
    local = AccountStore(box.cfg.paths.accounts_db)
    for address in (alice, bob, carol, admin_address):
        local.add(address, PASSWORD)
    local.add_alias(alice, f"sales@{box.domain}")
    local.set_limits(alice, LimitOverride(2, 4))
    local.set_quota(bob, None, 7)
    local.set_disabled(bob, True)
    local.set_admin(admin_address, True)
    local.hold(carol, "brake")
    hashes = {a["address"]: a["password"] for a in local.export_rows()[0]}
    local.close()

    # local -> shared, on the same box's config (the operator points it at the fleet's database).
    pg.use_in(box.config_file, db, redis_url)
    box.cli("db", "migrate")
    first = tmp_path / "from-local.json"
    assert "exported 4 account(s), 1 alias(es)" in box.cli("db", "export", "--backend", "local", str(first)).stdout
    assert stat.S_IMODE(first.stat().st_mode) == 0o600  # password hashes inside
    assert "imported 4 account(s)" in box.cli("db", "import", str(first)).stdout
    shared = pg_store(box)
    try:
        # Hashes carried as they were (nobody must choose a new password): the old password logs in.
        assert {a["address"]: a["password"] for a in shared.export_rows()[0]} == hashes
        assert shared.authenticate(alice, PASSWORD) is not None
        assert shared.authenticate(bob, PASSWORD) is None  # still disabled
        assert shared.owner_of(f"sales@{box.domain}") == alice
        held = shared.get(carol)
        assert held is not None and held.held and held.held_reason == "brake"
        admin = shared.get(admin_address)
        assert admin is not None and admin.admin
    finally:
        shared.close()
    # A second import of the same file: all refused, nothing doubled or changed.
    r = box.cli("db", "import", str(first), check=False)
    assert r.returncode == 1 and "exist here already, nothing imported" in r.stderr
    assert pg.psql("SELECT count(*) FROM accounts", db) == "4"
    # An export is never overwritten.
    r = box.cli("db", "export", str(first), check=False)
    assert r.returncode == 1 and "exists already" in r.stderr

    # shared -> local, onto a new box (what moving a box back looks like).
    second = tmp_path / "from-shared.json"
    box.cli("db", "export", str(second))
    other = make_box(tmp_path, name="other")
    assert "imported 4 account(s)" in other.cli("db", "import", str(second)).stdout
    third = tmp_path / "back-local.json"
    other.cli("db", "export", str(third))
    assert _accounts_of(third) == _accounts_of(first)
    back = AccountStore(other.cfg.paths.accounts_db)
    try:
        assert back.authenticate(alice, PASSWORD) is not None
        acct = back.get(alice)
        assert acct is not None and acct.override is not None and acct.override.burst == 4
    finally:
        back.close()


def test_import_refuses_a_bad_file_and_writes_nothing(tmp_path: Path) -> None:
    box = make_box(tmp_path, name="local")
    bad = tmp_path / "bad.json"
    cases = {
        "not json": "not JSON",
        json.dumps({"format": "something else"}): "not an accounts export",
        json.dumps({"format": "isp-mail-appliance accounts", "version": 1, "identities": [],
                    "accounts": [{"address": "a@example.test", "password": "clear text", "created": 1}]}):
            "accounts[0]: password: not an argon2 hash",
        json.dumps({"format": "isp-mail-appliance accounts", "version": 1, "identities": [],
                    "accounts": [{"address": "a@example.test", "password": "$argon2id$x", "created": 1,
                                  "colour": "blue"}]}): "accounts[0]: colour: Extra inputs are not permitted",
    }
    for text, message in cases.items():
        bad.write_text(text)
        r = box.cli("db", "import", str(bad), check=False)
        assert r.returncode == 1 and message in r.stderr, (text, r.stderr)
    assert box.cli("user", "list").stdout.strip() == ""


def _script(store: AccountStore | PgAccountStore) -> list[object]:
    """The same operations on a store; what each returned or refused (for comparing the two backends)."""
    out: list[object] = []

    def step(fn, *args):  # type: ignore[no-untyped-def]
        try:
            out.append(fn(*args))
        except AccountError as exc:
            out.append(f"refused: {exc}")

    step(lambda: store.add("Alice@Example.test", PASSWORD).address)
    step(store.add, "alice@example.test", PASSWORD)
    step(store.add, "b@example.test", "short")
    step(store.add_alias, "alice@example.test", "al@example.test")
    step(store.add_alias, "alice@example.test", "al@example.test")
    step(store.add, "al@example.test", PASSWORD)
    step(store.add_alias, "nobody@example.test", "x@example.test")
    step(store.set_limits, "alice@example.test", LimitOverride(0, 1))
    step(store.set_limits, "alice@example.test", LimitOverride(2.5, 3, 40))
    step(store.set_quota, "alice@example.test", -1, None)
    step(store.set_quota, "alice@example.test", 1000, 0)
    step(store.set_limit_class, "alice@example.test", "bulk")
    step(store.hold, "alice@example.test", "why")
    step(store.hold, "alice@example.test", "again")
    step(lambda: [(a.address, a.held_reason) for a in store.held()])
    step(store.release, "alice@example.test")
    step(store.set_disabled, "nobody@example.test", True)
    step(lambda: store.authenticate("ALICE@example.test", PASSWORD) is not None)
    step(lambda: store.authenticate("alice@example.test", "wrong password") is None)
    step(store.owner_of, "AL@example.test")
    a = store.get("alice@example.test")
    assert a is not None
    out.append((a.identities, a.override, a.limit_class, a.held, a.quota_storage, a.quota_messages, a.admin))
    step(store.del_alias, "alice@example.test", "nope@example.test")
    step(store.delete, "alice@example.test")
    step(store.owner_of, "al@example.test")  # the alias went with the account
    step(store.delete, "alice@example.test")
    return out


def test_both_backends_answer_the_same_calls_alike(tmp_path: Path, pg: PgServer) -> None:
    from appliance.accounts_pg import connect, migrate

    db = pg.new_database()
    conn = connect(pg.url(db), pg.password)
    migrate(conn)
    conn.close()
    local, shared = AccountStore(tmp_path / "accounts.sqlite3"), PgAccountStore(pg.url(db), pg.password)
    try:
        assert _script(shared) == _script(local)
    finally:
        local.close()
        shared.close()


def test_two_boxes_migrating_at_once_apply_each_version_once(pg: PgServer) -> None:
    import threading

    from appliance.accounts_pg import connect, migrate

    db = pg.new_database()
    results: list[tuple[int, int]] = []

    def run() -> None:
        conn = connect(pg.url(db), pg.password)
        try:
            results.append(migrate(conn))
        finally:
            conn.close()

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == [(0, 2), (2, 2), (2, 2)]
    assert pg.psql("SELECT count(*) FROM schema_version", db) == "2"


def test_local_delivery_defers_while_the_shared_accounts_are_down(tmp_path: Path, pg: PgServer) -> None:
    """Queued mail for a local mailbox needs the account (its quota): with PostgreSQL stopped it is
    deferred (kept in the queue, retried), never delivered past the quota nor dropped."""
    import asyncio
    import time
    from functools import partial

    from appliance.accounts_pg import connect, migrate
    from appliance.delivery.local import LocalDelivery
    from appliance.mailstore import maildir_path
    from appliance.spool.format import SpooledMessage

    db = pg.new_database()
    conn = connect(pg.url(db), pg.password)
    migrate(conn)
    conn.close()
    setup = PgAccountStore(pg.url(db), pg.password)
    setup.add("bob@example.test", PASSWORD)
    setup.close()
    cfg = make_box(tmp_path, name="local").cfg
    mail_dir = tmp_path / "mail"
    msg = SpooledMessage("Q1", "a@example.net", ("bob@example.test",), time.time(),
                         data=b"From: a@example.net\r\nSubject: t\r\n\r\nhi\r\n")

    def deliver() -> list[object]:
        ld = LocalDelivery(mail_dir, partial(PgAccountStore, pg.url(db), pg.password),
                           limit_classes=cfg.limits.classes)

        async def go() -> list[object]:
            try:
                return [(o.status, o.code) for o in await ld.deliver(["bob@example.test"], msg)]
            finally:
                ld.close()

        return asyncio.run(go())

    inbox = maildir_path(mail_dir, "bob@example.test") / "new"
    pg.stop()
    try:
        assert deliver() == [("deferred", 451)]
        assert not inbox.exists() or not any(inbox.iterdir())
    finally:
        pg.start()
    assert deliver() == [("delivered", 250)]
    assert len(list(inbox.iterdir())) == 1
