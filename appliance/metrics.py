"""Prometheus metrics of the relay (prometheus-client), served on ``listeners.metrics``.

Names are stable; docs/relay.md lists them. Other parts of the relay (spool,
delivery, limits) add their own metrics next to these, in this module, so one
registry serves them all.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server

CONNECTIONS = Counter("relay_connections_total", "Connections accepted at the socket, by listener", ["listener"])
SESSIONS_OPEN = Gauge("relay_sessions_open", "Connections currently open, by listener", ["listener"])
VERDICTS = Counter(
    "relay_policy_verdicts_total",
    "Refusals given by a policy check or the protocol layer, by listener, stage, origin (check name) and code",
    ["listener", "stage", "origin", "code"],
)
TLS_FAILURES = Counter("relay_tls_handshake_failures_total", "STARTTLS handshakes that failed (connection closed)")
AUTH = Counter("relay_auth_total", "SMTP AUTH attempts by result (ok, failed, refused by a limit, unavailable: accounts database down)", ["result"])
MESSAGES = Counter("relay_messages_accepted_total", "Messages stored in the spool, by listener", ["listener"])
RECIPIENTS = Counter("relay_recipients_accepted_total", "Recipients of stored messages, by listener", ["listener"])
BYTES = Counter("relay_message_bytes_total", "Bytes of stored messages (after header changes), by listener", ["listener"])
DATA_LATENCY = Histogram(
    "relay_data_to_reply_seconds",
    "Time from the end of DATA to the final reply (policy, signing, durable spool write)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
SPOOL_ERRORS = Counter("relay_spool_errors_total", "Messages refused because the spool failed (full, error)", ["kind"])
INTERNAL_ERRORS = Counter("relay_internal_errors_total", "Unexpected exceptions answered with 451 4.3.0", ["where"])
REGISTRY_RELOADS = Counter("relay_registry_reloads_total", "Registry snapshot reloads by result (ok, failed)", ["result"])
REGISTRY_MEMBERS = Gauge("relay_registry_members", "Members in the current registry snapshot")
REGISTRY_EXPIRED = Gauge("relay_registry_expired", "1 when the sync agent reports the registry expired")
# Per recipient, where the delivery manager settles an attempt (appliance/delivery/manager.py).
DELIVERIES = Counter(
    "relay_deliveries_total",
    "Recipients whose delivery attempt settled, by outcome: delivered, deferred (the attempt failed and will be "
    "retried) or bounced (permanent failure or lifetime exceeded; a DSN is generated unless the sender is null)",
    ["outcome"],
)
for _outcome in ("delivered", "deferred", "bounced"):
    DELIVERIES.labels(_outcome)  # exported as 0 from the start: the console's store takes its baseline early
INBOUND_AUTH = Counter(
    "relay_inbound_auth_total",
    "Results of the checks on mail from outside the consortium (relay.outsiders = verify), by check "
    "(dnsbl, spf, dkim, arc, dmarc, action) and result (pass, fail, softfail, none, temperror, listed, reject, junk...)",
    ["check", "result"],
)


def serve(host: str, port: int, registry: CollectorRegistry = REGISTRY) -> None:
    """Serve /metrics over plain HTTP from a daemon thread."""
    start_http_server(port, addr=host, registry=registry)
