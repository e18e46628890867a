"""Two running development boxes on loopback sharing one real PostgreSQL (accounts) and one Redis
(limiter): the set-up of the fleet tests that run boxes (test_pg_services, test_home_boxes,
test_home_move_sessions, test_home_move_ssh).

`two_boxes(tmp, tune=...)` starts PostgreSQL and Redis, makes a fresh database, makes boxes a and b,
points both at the shared state, lets TUNE edit each box's config (it gets the box's name and both
boxes, e.g. to write `[fleet]`), migrates the database, runs BEFORE (e.g. add the first users), runs
both boxes, and takes everything down again at the end, leaving no process behind.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.access.conftest import running_box
from tests.fleet.pg_server import PgServer, running_pg
from tests.fleet.redis_server import RedisServer
from tests.helpers.box import Box, make_box, run_cli


@dataclass
class TwoBoxes:
    pg: PgServer
    redis: RedisServer
    a: Box
    b: Box


Tune = Callable[[str, Box, "TwoBoxes"], None]


def named_box(tmp: Path, name: str) -> Box:
    """A development box named mx-NAME: two self-signed certificates used as a fleet's CAs must
    differ in subject, or OpenSSL's lookup by subject finds the other one and verification fails."""
    d = tmp / name
    run_cli(None, "init", "--dev", str(d), "--domain", "example.test", "--base-port", "0",
            "--host", "127.0.0.1", "--hostname", f"mx-{name}.example.test")
    return Box(d, d / "appliance.toml", "example.test")


@contextlib.contextmanager
def two_boxes(tmp: Path, tune: Tune | None = None, before: Callable[[TwoBoxes], None] | None = None,
              distinct_names: bool = False) -> Iterator[TwoBoxes]:
    """Boxes a and b running on one PostgreSQL database and one Redis (see the module's docstring).
    DISTINCT_NAMES: each box's certificate names mx-a / mx-b (needed when they are each other's CA)."""
    pg_gen = running_pg()
    pg = next(pg_gen)
    redis = RedisServer(tmp / "redis")
    try:
        redis.start()
        db = pg.new_database()
        if distinct_names:
            a, b = named_box(tmp, "a"), named_box(tmp, "b")
        else:
            a, b = make_box(tmp, name="a"), make_box(tmp, name="b")
        boxes = TwoBoxes(pg, redis, a, b)
        for name, box in (("a", a), ("b", b)):
            pg.use_in(box.config_file, db, redis.url)
            if tune is not None:
                tune(name, box, boxes)
        a.cli("db", "migrate")
        if before is not None:
            before(boxes)
        with running_box(a), running_box(b):
            yield boxes
    finally:
        redis.stop()
        pg_gen.close()
