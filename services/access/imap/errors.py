"""How a command handler ends: return ``Done`` (tagged OK) or raise ``No`` / ``Bad``.

The session turns these into the tagged response; anything else a handler raises is
logged and answered ``NO [SERVERBUG]`` (the client always gets its tag, never a hang).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Done:
    """Tagged OK with TEXT (and an optional RFC 5530 / RFC 4315 response code)."""

    text: str
    code: str | None = None


class No(Exception):
    """Tagged NO: the command was understood but failed (RFC 9051 §7.1.2)."""

    def __init__(self, text: str, code: str | None = None) -> None:
        super().__init__(text)
        self.text = text
        self.code = code


class Bad(Exception):
    """Tagged BAD: the command is not valid here or its arguments are wrong (RFC 9051 §7.1.3)."""

    def __init__(self, text: str, code: str | None = None) -> None:
        super().__init__(text)
        self.text = text
        self.code = code
