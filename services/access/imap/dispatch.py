"""The dispatch table: command name -> handler and the states it is valid in (RFC 9051 §6).

Handler modules register with ``@command(...)``; the session looks commands up here.
A handler is ``async def handler(session, cmd) -> Done`` and raises ``No``/``Bad``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from services.access.imap.errors import Done

NOT_AUTHENTICATED = "not authenticated"
AUTHENTICATED = "authenticated"
SELECTED = "selected"
ANY = frozenset({NOT_AUTHENTICATED, AUTHENTICATED, SELECTED})
AUTH_OR_SELECTED = frozenset({AUTHENTICATED, SELECTED})
ONLY_SELECTED = frozenset({SELECTED})
ONLY_NOT_AUTHENTICATED = frozenset({NOT_AUTHENTICATED})

Handler = Callable[[Any, Any], Awaitable[Done]]


@dataclass(frozen=True)
class Spec:
    name: str
    handler: Handler
    states: frozenset[str]
    uid: bool  # has a UID form (UID FETCH ...)
    plain: bool = True  # has a form without UID (SENDMAIL and EXPUNGE-with-set only with UID)
    # RFC 3501 §7.4.1 / RFC 9051 §7.5.1: no EXPUNGE while answering FETCH, STORE, SEARCH
    # (nor SORT/THREAD, RFC 5256 §4); allowed during their UID forms.
    expunge_ok: bool = True


COMMANDS: dict[str, Spec] = {}


def command(name: str, states: frozenset[str], *, uid: bool = False, plain: bool = True,
            expunge_ok: bool = True) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        COMMANDS[name] = Spec(name, fn, states, uid, plain, expunge_ok)
        return fn

    return register
