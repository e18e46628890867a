"""The durable queue: group-committed stores, per-recipient outcome log, recovery, quarantine.

See docs/spool.md for the on-disk format and the guarantees.
"""

from appliance.spool.format import SpooledMessage, SpoolFormatError
from appliance.spool.spool import Spool, SpoolError, SpoolFull

__all__ = ["Spool", "SpoolError", "SpoolFormatError", "SpoolFull", "SpooledMessage"]
