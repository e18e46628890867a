"""The mail store: Maildir messages, a per-account SQLite index, quotas (docs/mailstore.md).

``MailStore`` (an account), ``Mailbox`` (a folder), ``open_store`` (the bounded LRU of open
stores), ``maildir_path`` (collision-free account paths). A box left by the previous store
(``appliance-uidlist``) is imported once by ``rebuild.py``.
"""

from appliance.mailstore.account import MailboxStatus, MailStore, Usage
from appliance.mailstore.cache import open_store
from appliance.mailstore.errors import MailstoreError
from appliance.mailstore.mailbox import Mailbox, MailboxState, Record, StoreResult
from appliance.mailstore.maildir import crlf
from appliance.mailstore.names import DELIMITER, check_name
from appliance.mailstore.paths import account_maildir, maildir_path
from appliance.mailstore.quota import QuotaExceeded, QuotaLimits

__all__ = ["DELIMITER", "MailStore", "Mailbox", "MailboxState", "MailboxStatus",
           "MailstoreError", "QuotaExceeded", "QuotaLimits", "Record", "StoreResult", "Usage", "account_maildir",
           "check_name", "crlf", "maildir_path", "open_store"]
