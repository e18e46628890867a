"""The box's MTA-STS policy (RFC 8461 3.2) and the id of its `_mta-sts` TXT record (3.1).

Served by the console at ``https://mta-sts.DOMAIN/.well-known/mta-sts.txt`` for every local domain
(one policy: every local domain's MX is box.hostname).
"""

from __future__ import annotations

import hashlib

from appliance.config import Config

WELL_KNOWN_PATH = "/.well-known/mta-sts.txt"


def policy_text(cfg: Config) -> str:
    """The policy file. RFC 8461 3.2: key/value lines; `version` MUST be first and is `STSv1`;
    `mode`, `max_age` and (unless mode is none) one `mx` line per MX host are required."""
    lines = ["version: STSv1", f"mode: {cfg.publish.mta_sts_mode}", f"mx: {cfg.box.hostname}",
             f"max_age: {cfg.publish.mta_sts_max_age}"]
    # RFC 8461 3.2 allows CRLF or LF as the line delimiter; CRLF is what the ABNF lists first.
    return "\r\n".join(lines) + "\r\n"


def policy_id(cfg: Config) -> str:
    """The `id=` of `_mta-sts` (RFC 8461 3.1: 1-32 letters and digits; MUST change when the policy
    does). A hash of the policy text: stable while the policy is, and new whenever it changes."""
    return hashlib.sha256(policy_text(cfg).encode()).hexdigest()[:20]


def txt_record(cfg: Config) -> str:
    return f"v=STSv1; id={policy_id(cfg)}"
