"""A small time-series store: the box's own counters, sampled every minute into SQLite.

The console reads the relay's and the access service's Prometheus endpoints (`listeners.metrics`,
`listeners.access_metrics`, loopback) and the queue directory once a minute. A counter is kept as its
increase in that minute (a value lower than the last one read means the service restarted: the new
value is the increase), a gauge as its value, each for RETENTION. A counter seen for the first time
counts from 0 if its source answered before (labelled counters appear at their first event), and as
a baseline (increase 0) when the source is new to the store. No external Prometheus is needed.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from appliance.config import Config
from appliance.console import connect

RETENTION = 8 * 86400  # a week of graphs and a day of slack
SCRAPE_TIMEOUT = 5.0
MAX_SCRAPE_BYTES = 8 * 1024 * 1024  # a /metrics page larger than this is not read
MAX_SERIES = 500  # labelled series kept per source and sample (refusal origins, limit kinds): a cap on the store
SOURCES = ("metrics", "access_metrics")  # listeners read, besides the queue directory


@dataclass(frozen=True)
class Series:
    """One graph: the sampled series named KEY or KEY:LABEL, its title, counter or gauge."""

    key: str
    title: str
    counter: bool


# What the graphs page shows, in order. Labelled families become one series per label value
# ("refused:spf", "limited:auth_account"); a graph sums them and lists each.
GRAPHS: tuple[Series, ...] = (
    Series("accepted", "Messages accepted (stored in the spool)", True),
    Series("delivered", "Recipients delivered", True),
    Series("deferred", "Recipients deferred (attempt failed, will be retried)", True),
    Series("bounced", "Recipients bounced (permanent failure, DSN generated)", True),
    Series("refused", "Refusals by reason (policy check)", True),
    Series("limited", "Limiter hits by kind", True),
    Series("auth_failed", "Failed SMTP AUTH", True),
    Series("sessions_imap", "IMAP sessions open", False),
    Series("sessions_pop3", "POP3 sessions open", False),
    Series("queue", "Queue size (messages)", False),
)
COUNTER_KEYS = frozenset(g.key for g in GRAPHS if g.counter)
DELIVERY_OUTCOMES = ("delivered", "deferred", "bounced")  # relay_deliveries_total{outcome=...}


def is_counter(name: str) -> bool:
    return name.partition(":")[0] in COUNTER_KEYS


def _fetch(host: str, port: int) -> str:
    where = f"[{host}]" if ":" in host else host
    with urllib.request.urlopen(f"http://{where}:{port}/metrics", timeout=SCRAPE_TIMEOUT) as resp:
        return resp.read(MAX_SCRAPE_BYTES).decode("utf-8", "replace")


def values_from_metrics(text: str, source: str) -> dict[str, float]:
    """The sampled series found in one Prometheus text page of SOURCE."""
    out: dict[str, float] = dict.fromkeys(("accepted", "auth_failed", *DELIVERY_OUTCOMES), 0.0) \
        if source == "metrics" else {}

    def add(name: str, v: float) -> None:
        if name in out or len(out) < MAX_SERIES:
            out[name] = out.get(name, 0.0) + v

    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "relay_messages_accepted_total":
                add("accepted", s.value)
            elif s.name == "relay_deliveries_total" and s.labels.get("outcome") in DELIVERY_OUTCOMES:
                add(s.labels["outcome"], s.value)
            elif s.name == "relay_policy_verdicts_total":
                add(f"refused:{s.labels.get('origin', '?')}", s.value)
            elif s.name == "relay_rate_limited_total":
                add(f"limited:{s.labels.get('kind', '?')}", s.value)
            elif s.name == "relay_auth_total" and s.labels.get("result") == "failed":
                add("auth_failed", s.value)
            elif s.name == "access_sessions_open":
                add(f"sessions_{s.labels.get('protocol', '?')}", s.value)
    if source == "access_metrics":
        out.setdefault("sessions_imap", 0.0)
        out.setdefault("sessions_pop3", 0.0)
    return out


def queue_size(cfg: Config) -> int:
    try:
        return sum(1 for p in (Path(cfg.paths.spool_dir) / "queue").iterdir()
                   if p.is_file() and not p.name.startswith("."))
    except OSError:
        return 0


@dataclass
class Reading:
    values: dict[str, float]  # raw values: counters as read, gauges
    sources: list[str]  # the sources that answered
    missing: list[str]  # why the others did not (their series are absent, not zero)


def read_now(cfg: Config) -> Reading:
    r = Reading({"queue": float(queue_size(cfg))}, [], [])
    for name in SOURCES:
        lst = getattr(cfg.listeners, name)
        if not lst.enabled:
            continue
        try:
            r.values.update(values_from_metrics(_fetch(lst.host, lst.port), name))
            r.sources.append(name)
        except (OSError, ValueError) as exc:
            r.missing.append(f"{name} ({lst.host}:{lst.port}): {exc}")
    return r


class TimeSeries:
    def __init__(self, db: Path) -> None:
        self.db = db

    def _increments(self, db: object, reading: Reading) -> dict[str, float]:
        last = {s: v for s, v in db.execute("SELECT series, value FROM last_raw")}  # type: ignore[attr-defined]
        known_sources = {s.removeprefix("up:") for s in last if s.startswith("up:")}
        out: dict[str, float] = {}
        for name, v in reading.values.items():
            if not is_counter(name):
                out[name] = v
            elif name in last:
                out[name] = v - last[name] if v >= last[name] else v  # lower: restarted from 0
            else:
                # New counter: created at its first event if its source answered before (relay's
                # counters come from "metrics"); a baseline if the source is new to this store.
                out[name] = v if "metrics" in known_sources else 0.0
        return out

    def store(self, reading: Reading, now: float | None = None) -> int:
        """Keep READING as this minute's sample (a second one in the same minute adds its increases)."""
        minute = int((time.time() if now is None else now) // 60)
        with connect(self.db) as db:
            db.execute("BEGIN IMMEDIATE")
            inc = self._increments(db, reading)
            for name, v in inc.items():
                if is_counter(name):
                    db.execute("INSERT INTO samples(minute, series, value) VALUES (?, ?, ?) ON CONFLICT(minute, series) "
                               "DO UPDATE SET value = value + excluded.value", (minute, name, v))
                else:
                    db.execute("INSERT OR REPLACE INTO samples(minute, series, value) VALUES (?, ?, ?)",
                               (minute, name, v))
            db.executemany("INSERT OR REPLACE INTO last_raw(series, value, minute) VALUES (?, ?, ?)",
                           [(n, v, minute) for n, v in reading.values.items() if is_counter(n)]
                           + [(f"up:{s}", 1.0, minute) for s in reading.sources])
            db.execute("DELETE FROM samples WHERE minute < ?", (minute - RETENTION // 60,))
            db.execute("DELETE FROM last_raw WHERE minute < ?", (minute - RETENTION // 60,))
            db.execute("COMMIT")
        return minute

    def last_sample(self) -> tuple[int | None, list[str]]:
        """The minute of the newest sample and the sources that answered then."""
        with connect(self.db) as db:
            row = db.execute("SELECT MAX(minute) FROM samples").fetchone()
            ups = [s.removeprefix("up:") for (s,) in db.execute(
                "SELECT series FROM last_raw WHERE series LIKE 'up:%' AND minute = ?", (row[0],))]
        return row[0], sorted(ups)

    def points(self, graph: Series, since_minute: int, live: Reading | None = None,
               now: float | None = None) -> dict[str, list[tuple[int, float]]]:
        """Per sampled series under GRAPH: (minute, value) from SINCE_MINUTE on. LIVE (read just now, not
        stored) adds the current minute's increase since the last sample."""
        now_minute = int((time.time() if now is None else now) // 60)
        with connect(self.db) as db:
            rows = db.execute("SELECT minute, series, value FROM samples WHERE minute >= ? AND "
                              "(series = ? OR series LIKE ?) ORDER BY minute",
                              (since_minute, graph.key, graph.key + ":%")).fetchall()
            extra = self._increments(db, live) if live is not None else {}
        out: dict[str, list[tuple[int, float]]] = {}
        for minute, name, value in rows:
            out.setdefault(name, []).append((minute, value))
        for name, v in extra.items():
            if name != graph.key and not name.startswith(graph.key + ":"):
                continue
            seq = out.setdefault(name, [])
            if seq and seq[-1][0] == now_minute:
                seq[-1] = (now_minute, seq[-1][1] + v if graph.counter else v)
            else:
                seq.append((now_minute, v))
        return out


def total(points: Iterable[tuple[int, float]]) -> float:
    return sum(v for _, v in points)


def bucket(points: Iterable[tuple[int, float]], minutes: int, counter: bool) -> list[tuple[int, float]]:
    """Points in buckets of MINUTES (the 7-day graph: hours): sums of increases, maxima of gauges."""
    out: dict[int, float] = {}
    for m, v in points:
        b = m - m % minutes
        out[b] = (out.get(b, 0.0) + v) if counter else max(out.get(b, v), v)
    return sorted(out.items())
