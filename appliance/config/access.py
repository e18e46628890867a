"""`[access]`: the IMAP/POP service."""

from __future__ import annotations

from pydantic import Field

from appliance.config.base import Model


class AccessConfig(Model):
    """The IMAP/POP service."""

    outbox: str = Field("Outbox", description="Folder whose APPENDed or COPYed messages are sent.")
    append_limit: int = Field(
        0, ge=0, description="Largest message IMAP APPEND accepts, in bytes, advertised as APPENDLIMIT (RFC 7889); "
        "0 means `relay.max_message_size`.",
    )
    special_folders: list[str] = Field(
        default_factory=lambda: ["Sent", "Drafts", "Trash", "Junk"], description="Folders created with every account."
    )
