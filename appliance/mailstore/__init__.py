"""The mail store: Maildir messages, a per-account SQLite index, quotas (docs/mailstore.md).

New API (issue 13): ``MailStore``, ``Mailbox``, ``open_store``, ``maildir_path``.
The old ``Mailstore``/``Folder`` (appliance-uidlist) stay importable until the
old IMAP and POP servers are replaced; then ``folder.py`` and ``store.py`` go.
"""

from appliance.mailstore.account import MailboxStatus, MailStore, Usage
from appliance.mailstore.cache import open_store
from appliance.mailstore.errors import MailstoreError
from appliance.mailstore.folder import Folder
from appliance.mailstore.mailbox import Mailbox, MailboxState, Record, StoreResult
from appliance.mailstore.maildir import crlf
from appliance.mailstore.names import DELIMITER, check_name
from appliance.mailstore.paths import account_maildir, maildir_path
from appliance.mailstore.quota import QuotaExceeded, QuotaLimits
from appliance.mailstore.store import Mailstore

__all__ = ["DELIMITER", "Folder", "MailStore", "Mailbox", "MailboxState", "MailboxStatus", "Mailstore",
           "MailstoreError", "QuotaExceeded", "QuotaLimits", "Record", "StoreResult", "Usage", "account_maildir",
           "check_name", "crlf", "maildir_path", "open_store"]
