"""The box's configuration: one TOML file, validated once into a typed object.

Every key is declared in this package, with its type, default and description; the
reference in docs/configuration.md is generated from these models
(``python -m appliance.config --docs``) so the two cannot drift.

A bad file is refused before anything listens, with one line naming the file,
the key, the value and the reason (``ConfigError``); the CLI exits 2 on it.

The modules, one per part of the file: ``base`` (model base, ConfigError, value checks),
``box`` (box, paths, tls, dkim), ``listeners``, ``relay``, ``access``, ``registry``,
``limits``, ``state``, ``publish``; ``loader`` (the whole ``Config``, its cross-key checks,
``load``/``parse``); ``reference`` (the generated docs). Import from here: every name
below is this package's interface.
"""

from appliance.config.access import AccessConfig
from appliance.config.base import CONFIG_ENV, DEFAULT_CONFIG, ConfigError, Port, TlsMode, check_domain, ip_list
from appliance.config.box import BoxConfig, DkimConfig, PathsConfig, TlsConfig
from appliance.config.limits import AbuseBrakeConfig, LimitClass, LimitsConfig, Size
from appliance.config.listeners import (
    Listener,
    ListenersConfig,
    PublicWebListener,
    WellKnownHttpListener,
    WellKnownListener,
)
from appliance.config.loader import Config, load, parse
from appliance.config.publish import PublishConfig
from appliance.config.reference import reference_markdown
from appliance.config.registry import RegistryConfig
from appliance.config.relay import (
    OutboundConfig,
    OutboundResolverConfig,
    RelayConfig,
    RelayRoute,
    ResolverConfig,
    UpstreamConfig,
    VerifyConfig,
)
from appliance.config.state import StateConfig

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG",
    "AbuseBrakeConfig",
    "AccessConfig",
    "BoxConfig",
    "Config",
    "ConfigError",
    "DkimConfig",
    "LimitClass",
    "LimitsConfig",
    "Listener",
    "ListenersConfig",
    "OutboundConfig",
    "OutboundResolverConfig",
    "PathsConfig",
    "Port",
    "PublishConfig",
    "RegistryConfig",
    "RelayConfig",
    "RelayRoute",
    "ResolverConfig",
    "Size",
    "StateConfig",
    "TlsConfig",
    "TlsMode",
    "UpstreamConfig",
    "VerifyConfig",
    "PublicWebListener",
    "WellKnownHttpListener",
    "WellKnownListener",
    "check_domain",
    "ip_list",
    "load",
    "parse",
    "reference_markdown",
]
