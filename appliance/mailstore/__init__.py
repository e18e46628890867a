"""Maildir folders with persistent UIDs, flags and keywords, used by the access service (IMAP and POP)."""

from appliance.mailstore.folder import Folder, MailstoreError, crlf
from appliance.mailstore.store import DELIMITER, Mailstore, check_name, maildir_path

__all__ = ["DELIMITER", "Folder", "Mailstore", "MailstoreError", "check_name", "crlf", "maildir_path"]
