"""The whole config (`Config`, its cross-key checks) and reading it: `load` a file, `parse` a dict."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, model_validator

from appliance.config.access import AccessConfig
from appliance.config.base import CONFIG_ENV, DEFAULT_CONFIG, ConfigError, Model
from appliance.config.box import BoxConfig, DkimConfig, PathsConfig, TlsConfig
from appliance.config.limits import LimitsConfig
from appliance.config.listeners import ListenersConfig
from appliance.config.publish import PublishConfig
from appliance.config.registry import RegistryConfig
from appliance.config.relay import RelayConfig
from appliance.config.state import StateConfig
from appliance.fleet_config import FleetConfig


class Config(Model):
    """The whole box."""

    box: BoxConfig
    paths: PathsConfig = Field(default_factory=PathsConfig)
    tls: TlsConfig
    dkim: DkimConfig
    listeners: ListenersConfig = Field(default_factory=ListenersConfig)
    relay: RelayConfig = Field(default_factory=RelayConfig)
    access: AccessConfig = Field(default_factory=AccessConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    publish: PublishConfig = Field(default_factory=PublishConfig)
    state: StateConfig = Field(default_factory=StateConfig)
    fleet: FleetConfig = Field(default_factory=FleetConfig)

    # Set by load(); not a key in the file.
    source: str = Field("", exclude=True, description="(internal) the file this was loaded from")

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        if self.listeners.console.tls != "implicit":
            # Passwords and session cookies (Secure) travel over it: HTTPS only.
            raise ValueError("listeners.console.tls: must be 'implicit' (the console is served over HTTPS only)")
        wk, con = self.listeners.wellknown, self.listeners.console
        if wk.enabled:
            if wk.tls != "implicit":
                raise ValueError("listeners.wellknown.tls: must be 'implicit' (the well-known names are HTTPS only)")
            if con.enabled and wk.port == con.port and _overlap(wk.host, con.host):
                raise ValueError(f"listeners.wellknown.port: {wk.port} is the console's port (listeners.console.port)")
        self._check_wellknown_http()
        if self.box.role == "edge" and self.relay.upstream is None:
            raise ValueError("relay.upstream: required when box.role is 'edge'")
        if self.box.role == "member" and not self.box.member_id:
            raise ValueError("box.member_id: required when box.role is 'member'")
        # A domain accepted on port 25 with nowhere to send it would sit in the queue (or fall to
        # `outside`): refuse the config instead. Routes for domains not accepted are typos.
        for d in self.relay.relay_domains:
            if d not in self.relay.relay_routes:
                raise ValueError(f"relay.relay_domains: {d} has no next hop: add a [relay.relay_routes.\"{d}\"] table")
            if d in self.box.domains:
                raise ValueError(f"relay.relay_domains: {d} is a local domain (box.domains)")
        for d in self.relay.relay_routes:
            if d not in self.relay.relay_domains:
                raise ValueError(f"relay.relay_routes.{d}: not listed in relay.relay_domains")
        if self.state.backend == "shared":
            for key in ("redis_url", "postgres_url"):
                if not getattr(self.state, key):
                    raise ValueError(f"state.{key}: required when state.backend is 'shared'")
        self.fleet.check()  # home boxes (appliance/fleet_config.py)
        if self.fleet.boxes and self.state.backend != "shared":
            raise ValueError("fleet.boxes: home boxes need state.backend = 'shared' (the accounts are shared)")
        return self

    def _check_wellknown_http(self) -> None:
        http, wk, con = self.listeners.wellknown_http, self.listeners.wellknown, self.listeners.console
        if not http.enabled:
            return
        if http.tls != "none":
            raise ValueError("listeners.wellknown_http.tls: must be 'none' (plain HTTP; HTTPS is listeners.wellknown)")
        if not wk.enabled:
            raise ValueError("listeners.wellknown_http: needs listeners.wellknown on (its redirects go to that "
                             "HTTPS listener): write a [listeners.wellknown] table")
        for key, other in (("wellknown", wk), ("console", con)):
            if other.enabled and http.port == other.port and _overlap(http.host, other.host):
                raise ValueError(f"listeners.wellknown_http.port: {http.port} is listeners.{key}.port "
                                 "on an overlapping address")

    @property
    def registry_dir(self) -> Path:
        return Path(self.registry.dir or Path(self.paths.state_dir) / "registry")

    def dkim_domains(self) -> list[str]:
        return self.dkim.domains or list(self.box.domains)

    @property
    def outsiders(self) -> str:
        """relay.outsiders with its role default: `refuse` or `verify`."""
        return self.relay.outsiders or ("verify" if self.box.role == "edge" else "refuse")

    @property
    def authserv_id(self) -> str:
        return self.relay.verify.authserv_id or self.box.hostname


def _overlap(a: str, b: str) -> bool:
    """Whether binding A and B on one port would clash (the same address, or a wildcard of one family)."""
    wild = {"0.0.0.0", "::"}
    return a == b or a in wild or b in wild


def _format_error(path: str, err: dict[str, Any]) -> str:
    loc = [str(p) for p in err.get("loc", ())]
    msg = err.get("msg", "invalid")
    # Cross-field checks report their key inside the message.
    if not loc and ": " in msg:
        key, _, reason = msg.removeprefix("Value error, ").partition(": ")
        return f"{path}: key {key}: {reason}"
    key = ".".join(loc)
    if err.get("type") == "extra_forbidden":
        return f"{path}: key {key}: unknown key"
    if err.get("type") == "missing":
        return f"{path}: key {key}: required key is missing"
    value = err.get("input")
    shown = repr(value) if not isinstance(value, dict) else "(table)"
    if "password" in msg:  # a URL with a password in it: do not repeat the secret in logs
        shown = "(not shown)"
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return f"{path}: key {key}: value {shown}: {msg.removeprefix('Value error, ')}"


def parse(data: dict[str, Any], path: str = "<config>") -> Config:
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        raise ConfigError(_format_error(path, dict(first))) from None
    return cfg.model_copy(update={"source": path})


def load(path: str | os.PathLike[str] | None = None) -> Config:
    """Load and validate the config; raises ConfigError with a one-line reason."""
    p = str(path or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)
    try:
        with open(p, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such config file (run `appliance init --dev DIR` for a development box)") from None
    except PermissionError:
        raise ConfigError(f"{p}: permission denied") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    return parse(data, p)
