"""POP3 (RFC 1939, 2449, 3206, 5034, 2595) over the mail store's INBOX; see server.py.

- ``commands``: command lines -> typed commands, SASL PLAIN decoding (no I/O);
- ``framing``: input cut into lines, each with its length cap;
- ``wire``: a message as a multi-line response (CRLF, byte-stuffing, TOP), chunk by chunk;
- ``maildrop``: the session's snapshot of the INBOX, its lock, the UPDATE state (blocking; worker threads);
- ``stream``: writing long responses at the client's pace;
- ``xmit``: XTND XMIT, a message sent inside the session;
- ``server``: the session state machine on Twisted.
"""

from services.access.pop3.server import POP3Server

__all__ = ["POP3Server"]
