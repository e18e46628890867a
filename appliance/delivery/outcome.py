"""What happened to one recipient in one delivery attempt."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Status = Literal["delivered", "failed", "deferred"]


@dataclass(frozen=True)
class Outcome:
    recipient: str
    status: Status
    code: int  # SMTP reply code (ours or the remote's)
    enhanced: str  # RFC 3463 status, e.g. "5.1.1"
    text: str
    remote: str = ""  # "dns; HOST" of the remote MTA when one answered

    @property
    def final(self) -> bool:
        return self.status != "deferred"

    def record(self) -> dict[str, object]:
        return {"r": self.recipient, "s": self.status, "c": self.code, "x": self.enhanced, "t": self.text[:500],
                "m": self.remote}


def deferred(rcpts: list[str], code: int, enhanced: str, text: str, remote: str = "") -> list[Outcome]:
    return [Outcome(r, "deferred", code, enhanced, text, remote) for r in rcpts]


def failed(rcpts: list[str], code: int, enhanced: str, text: str, remote: str = "") -> list[Outcome]:
    return [Outcome(r, "failed", code, enhanced, text, remote) for r in rcpts]
