"""The access service: IMAP4rev1 and POP3 over TLS that can also send (docs/access.md)."""
