"""After DATA's 354: the message streamed into the spool, the data checks, the modifiers, the commit.

Memory per session is bounded whatever the message size: the decoder holds back
at most one short unfinished line, ``HeaderCollector`` at most the header
section (MAX_HEADER_BYTES), and ``Incoming`` at most FLUSH_BYTES before a spool
thread writes them. The data checks get the header fields and a way to read the
body back (``Message.iter_body()``, from the spool file); the modifiers change
only the header block, written beside the body.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from appliance import metrics
from appliance.message import MAX_HEADER_BYTES, HeaderCollector
from appliance.policy import modifiers
from appliance.policy.session import Envelope as AcceptedEnvelope
from appliance.policy.session import Session as PolicySession
from appliance.policy.verdicts import (
    BARE_NEWLINE,
    HEADER_TOO_BIG,
    INTERNAL_ERROR,
    MESSAGE_TOO_BIG,
    QUEUED,
    SPOOL_FULL,
    Verdict,
)
from appliance.spool import SpoolError, SpoolFull
from appliance.spool.incoming import Incoming

if TYPE_CHECKING:
    from services.relay.app import RelayApp
    from services.relay.smtp import RelaySMTP

log = logging.getLogger("relay.smtp")


class Receiver:
    def __init__(self, app: RelayApp) -> None:
        self.app = app
        # They run in the spool thread that commits each message (Incoming.commit), never on the
        # event loop: DKIM's RSA signature is pure Python.
        self.modifiers = modifiers.build(app.cfg.box.hostname, app.signer)

    async def receive(self, server: RelaySMTP) -> Verdict:
        """Read the data to its end and store it; the reply to give."""
        ps = server.psession
        assert ps is not None and ps.sender is not None
        meta = {
            "listener": server.listener,
            "protocol": ps.protocol,
            "client_ip": ps.client_ip,
            "helo": ps.helo,
            "login": ps.login,
            "member": ps.member_id,
        }
        recipients = list(ps.recipients)
        incoming = self.app.spool.begin(ps.sender, recipients, meta)
        server.start_data()
        try:
            try:
                return await self._receive(server, ps, incoming, recipients)
            finally:
                await server.drain_data()  # after a refusal mid-data; nothing left once the end was read
        finally:
            await incoming.abort()  # a no-op once committed

    async def _receive(self, server: RelaySMTP, ps: PolicySession, incoming: Incoming,
                       recipients: list[str]) -> Verdict:
        app = self.app
        limit = server.data_size_limit or 0
        headers = HeaderCollector()
        run: modifiers.Run | None = None
        size = 0
        refused: Verdict | None = None
        while (data := await server.read_data()) is not None:
            if refused is not None or server.bare_newline:
                continue  # read to the end: the reply must come after it (RFC 5321 4.2.5)
            size += len(data)
            if limit and size > limit:
                refused = server.data_refused(MESSAGE_TOO_BIG.verdict("size", limit=limit))
                continue
            body = headers.feed(data)
            if headers.too_big:
                refused = server.data_refused(HEADER_TOO_BIG.verdict("size", limit=MAX_HEADER_BYTES))
            elif body is not None:
                run = self._begin(ps, headers, run, body, incoming)
                refused = await self._write(server, incoming, body)
        if server.bare_newline:
            # SMTP smuggling: a bare LF or CR could end DATA at a less careful next hop.
            return server.data_refused(BARE_NEWLINE.verdict("smuggling"))
        if refused is not None:
            return refused
        body = headers.finish()
        run = self._begin(ps, headers, run, body, incoming)
        if (refused := await self._write(server, incoming, body)) is not None:
            return refused
        message = run.message
        message.body_size = incoming.body_size
        # Read back from the spool file; what is still buffered is written first (iter_body).
        message.body_source = incoming.iter_body
        # Checks that need the network or the whole body do it here, in a worker thread (outsiders only).
        await app.pipeline.prepare_data(ps, message)
        verdict = app.pipeline.data(ps, message)
        if verdict is not None:
            return verdict
        try:
            # The last body bytes, the modifiers (DKIM's signature: after the last body byte) and the
            # fsync in one spool-thread call: a 1 KB message costs one thread hand-off in DATA.
            queue_id = await incoming.commit(run.finish)
        except SpoolError as exc:
            return self._spool_refused(server, exc)
        total = incoming.header_size + incoming.body_size
        ps.messages += 1
        metrics.MESSAGES.labels(server.listener).inc()
        metrics.RECIPIENTS.labels(server.listener).inc(len(recipients))
        metrics.BYTES.labels(server.listener).inc(total)
        log.info("queued %s listener=%s ip=%s login=%s member=%s from=<%s> rcpts=%d size=%d", queue_id,
                 server.listener, ps.client_ip, ps.login, ps.member_id, ps.sender, len(recipients), total)
        app.pipeline.accepted(ps, AcceptedEnvelope(queue_id, ps.sender, tuple(recipients), total))
        return QUEUED.verdict("spool", queue_id=queue_id)

    def _begin(self, ps: PolicySession, headers: HeaderCollector, run: modifiers.Run | None, body: bytes,
               incoming: Incoming) -> modifiers.Run:
        """The header section is complete: start the modifiers, whose taps then see every body byte."""
        if run is not None:
            return run
        assert headers.message is not None
        run = self.modifiers.begin(ps, headers.message, body)
        for tap in run.body_taps():
            incoming.add_tap(tap.update)
        return run

    async def _write(self, server: RelaySMTP, incoming: Incoming, body: bytes) -> Verdict | None:
        try:
            await incoming.write(body)
        except SpoolError as exc:
            return self._spool_refused(server, exc)
        return None

    @staticmethod
    def _spool_refused(server: RelaySMTP, exc: SpoolError) -> Verdict:
        if isinstance(exc, SpoolFull):
            log.error("spool full: %s", exc)
            metrics.SPOOL_ERRORS.labels("full").inc()
            return server.data_refused(SPOOL_FULL.verdict("spool"))
        log.error("spool error: %s", exc)
        metrics.SPOOL_ERRORS.labels("error").inc()
        return server.data_refused(INTERNAL_ERROR.verdict("spool"))
