"""The one exception of the mail store."""

from __future__ import annotations


class MailstoreError(Exception):
    """A refused mail store operation; the message is safe to show to a client.

    ``code`` is the RFC 5530 response code the IMAP server should send with its NO
    (NONEXISTENT, ALREADYEXISTS, OVERQUOTA, TRYCREATE, CANNOT, EXPUNGEISSUED, SERVERBUG...),
    or None.
    """

    def __init__(self, text: str, code: str | None = None) -> None:
        super().__init__(text)
        self.text = text
        self.code = code
