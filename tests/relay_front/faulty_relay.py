"""The relay with deliberate bugs, to prove an internal error answers 451 4.3.0 and never 500.

Run as ``python -m tests.relay_front.faulty_relay -c CONFIG``. The bugs fire
only for the magic addresses and subject below; everything else is the real relay.
"""

from __future__ import annotations

import sys
from typing import Any

from appliance.policy import modifiers, pipeline
from appliance.policy.check import Check
from services.relay import __main__ as relay_main
from services.relay.smtp import RelayHandler

_original_rcpt = RelayHandler.handle_RCPT
_original_finish = modifiers.Run.finish


async def handle_RCPT(self: RelayHandler, server: Any, session: Any, envelope: Any, address: str,
                      options: list[str]) -> str:
    if address.startswith("explode-rcpt@"):
        raise RuntimeError("deliberate bug in the RCPT hook")
    return await _original_rcpt(self, server, session, envelope, address, options)


def finish(self: modifiers.Run) -> bytes:
    if b"explode-data" in self.message.header_block():
        raise RuntimeError("deliberate bug after DATA (in the modifier stage)")
    return _original_finish(self)


class ExplodingCheck(Check):
    name = "exploding"

    def __init__(self, ctx: Any) -> None:
        pass

    def on_mail(self, session: Any, sender: str) -> None:
        if sender.startswith("explode-check@"):
            raise RuntimeError("deliberate bug in a policy check")


RelayHandler.handle_RCPT = handle_RCPT  # type: ignore[method-assign]
modifiers.Run.finish = finish  # type: ignore[method-assign]
pipeline.CHECKS.insert(0, ExplodingCheck)

if __name__ == "__main__":
    sys.exit(relay_main.main())
