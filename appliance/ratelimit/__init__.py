"""Rate limits (GCRA), persistent daily quotas, outbound pacing and the abuse brake.

See docs/ratelimits.md. Protocol-free: the policy checks in appliance/policy/
turn a ``Limited`` into an SMTP reply; the access service maps the relay's
replies to IMAP/POP.
"""

from appliance.ratelimit.decisions import Kind, Limited
from appliance.ratelimit.gcra import Gcra, Rate
from appliance.ratelimit.keys import account_key, domain_key, ip_key, member_key
from appliance.ratelimit.limiter import Limiter, SenderLimits

__all__ = [
    "Gcra",
    "Kind",
    "Limited",
    "Limiter",
    "Rate",
    "SenderLimits",
    "account_key",
    "domain_key",
    "ip_key",
    "member_key",
]
