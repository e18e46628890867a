"""`[state]`: where limiter state and accounts live (this box, or Redis and PostgreSQL for a fleet)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from appliance.config.base import ConfigError, Model


def _refuse_password(url: str, key: str) -> None:
    """Passwords live in files (`*_password_file`), never in the config: it is world-readable and in pillar."""
    from urllib.parse import parse_qs, urlsplit

    parts = urlsplit(url)
    if parts.password is not None or "password" in {k.lower() for k in parse_qs(parts.query)}:
        raise ValueError(f"has a password in it: put it in state.{key}_password_file instead")


class StateConfig(Model):
    """Where limiter state and accounts live: this box alone (`local`) or shared by a fleet (docs/fleet.md)."""

    backend: Literal["local", "shared"] = Field(
        "local",
        description="`local`: SQLite and in-process memory on this box, as a single box needs; `shared`: the limiter "
        "in Redis (`state.redis_url`) and accounts in PostgreSQL (`state.postgres_url`), shared by every box.",
    )
    redis_url: str = Field(
        "", description="Redis of the shared limiter: `redis://[USER@]HOST:PORT/DB`, `rediss://...` (TLS) or "
        "`unix:///PATH?db=N`; no password in it (see `state.redis_password_file`)."
    )
    redis_password_file: str = Field(
        "", description="File holding the Redis password (mode 0600); empty: no AUTH."
    )
    redis_timeout: float = Field(
        0.5, gt=0, le=10,
        description="Seconds one Redis command or connect may take; then the decision fails and new mail gets "
        "`451 4.3.0`, so a dead Redis never hangs a session.",
    )
    connection_lease: int = Field(
        30, ge=5, le=3600,
        description="Seconds a box's shared connection counts live unless it refreshes them (every third of it): "
        "a box that crashed releases its slots after this long.",
    )
    postgres_url: str = Field(
        "", description="PostgreSQL of the shared accounts: `postgresql://[USER@]HOST[:PORT]/DBNAME`; no password "
        "in it (see `state.postgres_password_file`)."
    )
    postgres_password_file: str = Field(
        "", description="File holding the PostgreSQL password (mode 0600); empty: none (peer or cert auth)."
    )

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, v: str) -> str:
        if v:
            if v.split("://", 1)[0] not in ("redis", "rediss", "unix") or "://" not in v:
                raise ValueError("must start with redis://, rediss:// or unix://")
            _refuse_password(v, "redis")
        return v

    @field_validator("postgres_url")
    @classmethod
    def _postgres_url(cls, v: str) -> str:
        if v:
            if v.split("://", 1)[0] not in ("postgresql", "postgres") or "://" not in v:
                raise ValueError("must start with postgresql://")
            _refuse_password(v, "postgres")
        return v

    def password(self, which: Literal["redis", "postgres"]) -> str | None:
        """The password read from `state.WHICH_password_file` (None: no file set); ConfigError names the key."""
        path = self.redis_password_file if which == "redis" else self.postgres_password_file
        if not path:
            return None
        try:
            text = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"key state.{which}_password_file: {path}: {exc.strerror or exc}") from None
        if not text:
            raise ConfigError(f"key state.{which}_password_file: {path}: file is empty")
        return text
