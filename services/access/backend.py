"""What IMAP and POP sessions share: login through the shared limiter, mail stores, sending.

Blocking work (argon2 verification, the relay socket) runs in Twisted's thread
pool so one slow login never stalls other sessions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from twisted.internet import defer, threads
from twisted.python import log

from appliance.accounts import Account, AccountStore, AccountsUnavailable, open_accounts
from appliance.config import Config
from appliance.mailstore import MailStore, account_maildir, open_store
from appliance.mailstore.quota import limits_for
from appliance.submitclient import EnvelopeError, Reply, SubmitClient, envelope
from services.access.conncaps import ConnectionCaps

if TYPE_CHECKING:
    from appliance.accounts_pg import PgAccountStore


# What a client is told while the accounts database is unreachable (not why: that is for the log).
# 4.3.0, not 4.7.x: a system fault, so IMAP says [UNAVAILABLE] and not [LIMIT] (Reply.imap_code).
ACCOUNTS_UNAVAILABLE = Reply(451, "Accounts temporarily unavailable, try again later", "4.3.0")


class LoginRefused(Exception):
    """Wrong login or password (the text is what the client sees)."""


class LoginUnavailable(Exception):
    """The login cannot be judged now: limiter says wait, or the relay is down (fail closed)."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.text)
        self.reply = reply


@dataclass
class Backend:
    cfg: Config
    accounts: AccountStore | PgAccountStore  # state.backend's store (appliance.accounts.open_accounts)
    submit: SubmitClient
    # The process's one set of IMAP/POP connection counts (services/access/conncaps.py).
    caps: ConnectionCaps = field(init=False)

    def __post_init__(self) -> None:
        self.caps = ConnectionCaps(self.cfg)

    @classmethod
    def from_config(cls, cfg: Config) -> Backend:
        return cls(cfg, open_accounts(cfg), SubmitClient(cfg.paths.internal_socket))

    def mailstore(self, address: str) -> MailStore:
        """Blocking. The account's shared store (a bounded LRU per process), with its quota limits."""
        account = self.accounts.get(address)
        limits = limits_for(account, self.cfg.limits.classes) if account is not None else None
        return open_store(account_maildir(self.cfg.paths.mail_dir, address), self.cfg.access.special_folders,
                          self.cfg.access.outbox, quota=limits)

    @defer.inlineCallbacks
    def login(self, user: str, password: str, client_ip: str,  # type: ignore[no-untyped-def]
              *, protocol: str = "imap"):
        """Deferred Account; LoginRefused or LoginUnavailable on failure.

        The shared limiter is asked before verifying (so a blocked address, or an
        account under attack from new addresses, costs no argon2 work) and told
        after every failure, with the login, so failures count per address and per
        account. A success is reported too: the address becomes one the account is
        known to log in from, which keeps its owner out of reach of attacks on the
        account from elsewhere. Refusals are temporary (NO [LIMIT], -ERR [SYS/TEMP]).
        PROTOCOL ("imap" or "pop3") is the entry the relay's limiter metrics count it under.
        """
        check: Reply = yield threads.deferToThread(self.submit.auth_check, client_ip, user, protocol)
        if not check.ok:
            raise LoginUnavailable(check)
        try:
            account: Account | None = yield threads.deferToThread(self.accounts.authenticate, user, password)
        except AccountsUnavailable as exc:
            # The shared accounts database is down (issue 16 item 4): temporary, never "wrong password";
            # IMAP answers NO [UNAVAILABLE] (RFC 5530 3), POP3 -ERR [SYS/TEMP] (RFC 3206 4).
            log.msg(f"{protocol} login of {user[:100]!r}: {exc}")
            raise LoginUnavailable(ACCOUNTS_UNAVAILABLE) from None
        if account is None:
            fail: Reply = yield threads.deferToThread(self.submit.auth_fail, client_ip, user, protocol)
            if not fail.ok and fail.code != 421:
                raise LoginUnavailable(fail)
            raise LoginRefused("authentication failed")
        # Best effort: if the relay cannot take the note now, the address is just not learnt yet.
        yield threads.deferToThread(self.submit.auth_ok, client_ip, account.address, protocol)
        return account

    def send(self, account: str, client_ip: str, protocol: str, message: bytes, sender: str | None = None,
             recipients: list[str] | None = None) -> defer.Deferred[Reply]:
        """Hand MESSAGE to the relay as ACCOUNT; fires with the relay's reply (never errbacks)."""
        try:
            env_from, rcpts = envelope(message, account, sender, recipients)
        except EnvelopeError as exc:
            return defer.succeed(Reply(554, str(exc), "5.6.0"))
        max_size = self.cfg.relay.max_message_size
        if len(message) > max_size:
            return defer.succeed(Reply(552, f"message exceeds the size limit of {max_size} bytes", "5.3.4"))
        return threads.deferToThread(self.submit.submit, account, client_ip, protocol, env_from, rcpts, message)
