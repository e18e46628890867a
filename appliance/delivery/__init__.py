"""Routing and delivery: local Maildir, member relays (TLS, pinned), upstream (edge), DNS MX; DSNs.

See docs/spool.md for the queue's life cycle.
"""

from appliance.delivery.manager import DeliveryManager
from appliance.delivery.routing import Destination, Route

__all__ = ["DeliveryManager", "Destination", "Route"]
