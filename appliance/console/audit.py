"""The console's audit log: every change made through it (and every login), with who, from where
and what came of it. Only appended to; the newest rows are shown on the audit page."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from appliance.console import connect

MAX_TEXT = 500  # one row's fields are capped: a target typed into a form cannot grow the file unbounded


@dataclass(frozen=True)
class Entry:
    ts: float
    actor: str
    client_ip: str
    action: str
    target: str
    result: str


class AuditLog:
    def __init__(self, db: Path) -> None:
        self.db = db

    def record(self, actor: str, client_ip: str, action: str, target: str, result: str) -> None:
        with connect(self.db) as db:
            db.execute("INSERT INTO audit(ts, actor, client_ip, action, target, result) VALUES (?, ?, ?, ?, ?, ?)",
                       (time.time(), actor[:MAX_TEXT], client_ip[:MAX_TEXT], action[:MAX_TEXT],
                        target[:MAX_TEXT], result[:MAX_TEXT]))

    def recent(self, limit: int = 200) -> list[Entry]:
        with connect(self.db) as db:
            rows = db.execute("SELECT ts, actor, client_ip, action, target, result FROM audit "
                              "ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [Entry(*r) for r in rows]
