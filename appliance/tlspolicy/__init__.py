"""Outbound TLS that cannot be downgraded (relay.outside = "mx"), docs/internet.md "Outbound".

- ``dnssec``: lookups through the validating resolver, with the AD bit (RFC 4035 3.2.3, RFC 6840 5.7);
- ``dane``: TLSA records of MX hosts (RFC 7672, RFC 6698/7671);
- ``mtasts``: MTA-STS policies fetched over HTTPS and cached (RFC 8461);
- ``hoptls``: what one MX host's TLS must be, checked after the handshake;
- ``tlsrpt``: counts per policy domain and the daily aggregate reports (RFC 8460).
"""
