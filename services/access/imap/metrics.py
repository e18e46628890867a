"""Prometheus metrics of the access service (issue 13 item 6), served on ``listeners.access_metrics``.

Served like the relay's (``appliance.metrics.serve``: plain HTTP from a daemon thread, on
loopback by default). POP3 counts its sessions here too (label protocol="pop3").
"""

from __future__ import annotations

from prometheus_client import REGISTRY, Counter, Gauge, start_http_server

SESSIONS = Gauge("access_sessions_open", "Connections currently open, by protocol", ["protocol"])
CONNECTIONS = Counter("access_connections_total", "Connections accepted, by protocol", ["protocol"])
# Refusals by the connection caps are counted by services.access.conncaps
# (access_connections_refused_total{protocol, limit}).
COMMANDS = Counter("access_imap_commands_total", "IMAP commands by name and result (OK, NO, BAD)",
                   ["command", "result"])
IDLE = Gauge("access_imap_idle_sessions", "IMAP sessions currently in IDLE")
LOGINS = Counter("access_logins_total", "Logins by protocol and result (ok, failed, unavailable)",
                 ["protocol", "result"])
WATCHED = Gauge("access_imap_watched_mailboxes", "Mailboxes watched with inotify (selected by some session)")


class _StoreCounters:
    """The store's own counters (appliance never imports prometheus-client's registry of services)."""

    def collect(self):  # type: ignore[no-untyped-def]
        from prometheus_client.core import CounterMetricFamily

        from appliance.mailstore.index import REBUILDS

        family = CounterMetricFamily("access_index_rebuilds", "Mail store indexes rebuilt from the Maildir "
                                     "(lost, corrupt or foreign index)")
        family.add_metric([], REBUILDS.value)
        yield family


REGISTRY.register(_StoreCounters())


def serve(host: str, port: int) -> None:
    """Serve /metrics over plain HTTP from a daemon thread (as the relay does, appliance.metrics.serve)."""
    start_http_server(port, addr=host, registry=REGISTRY)
