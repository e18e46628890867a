"""Quota for APPEND and COPY (RFC 9208; NO [OVERQUOTA]) and GETQUOTA's numbers.

The store checks the quota itself in ``append``/``copy_to`` (MailstoreError OVERQUOTA);
a MULTIAPPEND is checked for its total first, so nothing of it is stored when all of it
would not fit (RFC 3502 §3: atomic).
"""

from __future__ import annotations

from typing import Any

from services.access.imap import storeio


def account_limits(s: Any) -> Any:
    """The logged-in account's QuotaLimits (0: unlimited), or None."""
    return getattr(s.store, "quota", None)


async def check(s: Any, add_bytes: int, add_messages: int) -> None:
    """MailstoreError(OVERQUOTA) -> NO [OVERQUOTA] if this much more would not fit."""
    await storeio.run(s.store.check_quota, add_bytes, add_messages)
