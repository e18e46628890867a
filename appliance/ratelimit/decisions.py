"""What the limiter decides, independent of any protocol.

A ``Limited`` names the kind of limit, the key it applied to, the limit itself
and the exact retry-after. The policy layer turns it into an SMTP reply
(appliance/policy/verdicts.py), the access service into IMAP ``NO`` / POP ``-ERR``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum


class Kind(StrEnum):
    CONNECTIONS = "connections"  # concurrent connections (per IP, or per member)
    CONNECTION_RATE = "connection_rate"  # new connections per minute per IP
    AUTH_FAILURES = "auth_failures"  # failed logins per IP
    AUTH_ACCOUNT = "auth_account"  # failed logins per account (new addresses, or known ones)
    MESSAGES = "messages"  # message rate per account or member
    RECIPIENTS = "recipients"  # recipient rate per account
    DAILY = "daily"  # messages per UTC day per account
    RECIPIENTS_PER_MESSAGE = "recipients_per_message"  # relay.max_recipients
    OUTSIDER_MESSAGES = "outsider_messages"  # messages per minute per outside client address and per /24 (/48)


@dataclass(frozen=True, slots=True)
class Limited:
    kind: Kind
    key: str
    limit: str  # human-readable, e.g. "30/min burst 20"
    retry_after: float  # seconds; 0.0 when no time would help (e.g. too many recipients in one message)

    @property
    def retry_seconds(self) -> int:
        """Whole seconds a client should wait: rounded up, at least 1."""
        return max(1, math.ceil(self.retry_after - 1e-9))

    def log_fields(self) -> str:
        return f"limit={self.kind} key={self.key} limit_value={self.limit!r} retry_after={self.retry_after:.3f}"


class StateUnavailable(Exception):
    """The shared limiter's Redis cannot be reached or failed (``state.backend = "shared"``, shared.py):
    the decision cannot be made, and the client gets ``451 4.3.0``."""
