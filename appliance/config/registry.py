"""`[registry]`: the consortium registry this box trusts."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from appliance.config.base import Model


class RegistryConfig(Model):
    """The consortium registry this box trusts."""

    url: str = Field("", description="Base URL of the TUF repository (metadata/ and targets/ under it). Empty: local file only.")
    root: str = Field("", description="The pinned, trusted root.json for the TUF client.")
    dir: str = Field("", description="Where the verified copy lives; default STATE_DIR/registry.")
    poll_interval: int = Field(300, gt=0, description="Seconds between polls (jittered by up to 10%).")
    alarm_after_failures: int = Field(3, gt=0, description="Consecutive failed polls before the alarm is raised.")
    firewall: Literal["auto", "off"] = Field(
        "auto",
        description="`auto`: load the member address set into nftables table `inet appliance` when nft and the "
        "table exist; `off` (development boxes): only write REGISTRY_DIR/members.nft.",
    )
