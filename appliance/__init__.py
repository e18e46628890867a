"""The ISP Mail Appliance core: config, accounts, policy, limits, spool, registry model, mail store, CLI.

Never imports `services` (see docs/ARCHITECTURE.md).
"""

__version__ = "0.1.0"
