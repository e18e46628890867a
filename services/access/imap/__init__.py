"""The IMAP server (issue 14): IMAP4rev1 and IMAP4rev2 with the extensions modern clients use.

Layers: ``transport`` (Twisted Protocol: TLS, COMPRESS, backpressure) -> ``session`` (state
machine, dispatch, literals, untagged updates; ``selected`` is the view of the selected
mailbox) -> ``cmd_*`` (the handlers, by area) -> the store (``appliance.mailstore``, always via
``storeio`` off the reactor) and message semantics (``services.access.imapmsg``). ``notify``
carries changes between sessions (inotify + an in-process hub).
"""

from services.access.imap import (  # noqa: F401  (each registers its commands)
    cmd_append,
    cmd_auth,
    cmd_copy,
    cmd_fetch,
    cmd_mailbox,
    cmd_search,
    cmd_select,
    cmd_send,
    cmd_store,
)
from services.access.imap.transport import IMAPConnection, IMAPFactory

__all__ = ["IMAPConnection", "IMAPFactory"]
