"""Opening the logged-in account's mail store (off the reactor), with its quota limits.

``Backend.mailstore`` returns the process's shared store of the account
(``appliance.mailstore.open_store``: a bounded LRU, one object per account root), so
sessions of one customer share one index connection set and nothing is closed here.
"""

from __future__ import annotations

from typing import Any

from services.access.imap import storeio


def _open(backend: Any, account: Any) -> Any:
    store = backend.mailstore(account.address)
    # The account's quota as it is now (`appliance user quota` may have changed it since the
    # shared store was opened): its own override, else its limit class's.
    from appliance.mailstore.quota import limits_for

    store.quota = limits_for(account, backend.cfg.limits.classes)
    return store


async def acquire(backend: Any, account: Any) -> Any:
    return await storeio.run(_open, backend, account)
