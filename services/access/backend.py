"""What IMAP and POP sessions share: login through the shared limiter, mail stores, sending.

Blocking work (argon2 verification, the relay socket) runs in Twisted's thread
pool so one slow login never stalls other sessions.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet import defer, threads

from appliance.accounts import Account, AccountStore
from appliance.config import Config
from appliance.mailstore import Mailstore, maildir_path
from appliance.submitclient import EnvelopeError, Reply, SubmitClient, envelope


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
    accounts: AccountStore
    submit: SubmitClient

    @classmethod
    def from_config(cls, cfg: Config) -> Backend:
        return cls(cfg, AccountStore(cfg.paths.accounts_db), SubmitClient(cfg.paths.internal_socket))

    def mailstore(self, address: str) -> Mailstore:
        store = Mailstore(maildir_path(self.cfg.paths.mail_dir, address), self.cfg.access.special_folders,
                          self.cfg.access.outbox)
        store.ensure()
        return store

    @defer.inlineCallbacks
    def login(self, user: str, password: str, client_ip: str):  # type: ignore[no-untyped-def]
        """Deferred Account; LoginRefused or LoginUnavailable on failure.

        The shared limiter is asked before verifying (so a blocked address costs
        no argon2 work) and told after every failure.
        """
        check: Reply = yield threads.deferToThread(self.submit.auth_check, client_ip)
        if not check.ok:
            raise LoginUnavailable(check)
        account: Account | None = yield threads.deferToThread(self.accounts.authenticate, user, password)
        if account is None:
            fail: Reply = yield threads.deferToThread(self.submit.auth_fail, client_ip)
            if not fail.ok and fail.code != 421:
                raise LoginUnavailable(fail)
            raise LoginRefused("authentication failed")
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
