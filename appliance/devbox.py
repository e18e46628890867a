"""`appliance init --dev DIR`: a complete loopback box under one directory.

Writes DIR/appliance.toml with every path under DIR, a self-signed certificate,
a DKIM key, and a one-member consortium registry whose only member is this box
at HOST/32.
"""

from __future__ import annotations

import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

import tomli_w

from appliance import config as config_mod
from appliance.publish.records import WEB_NAMES
from appliance.tlsfiles import make_dkim_key, make_self_signed

LISTENER_ORDER = ("mx", "submission", "submissions", "imap", "imaps", "pop3", "pop3s", "metrics", "access_metrics",
                  "console", "wellknown")
LISTENER_TLS = {
    "mx": "starttls",
    "submission": "starttls",
    "submissions": "implicit",
    "imap": "starttls",
    "imaps": "implicit",
    "pop3": "starttls",
    "pop3s": "implicit",
    "metrics": "none",
    "access_metrics": "none",
    "console": "implicit",
    "wellknown": "implicit",  # MTA-STS, autoconfig, Autodiscover (docs/console.md)
}


# [paths] of a box that keeps everything under one directory: key -> subdirectory.
DEV_PATHS = {"state_dir": "lib", "spool_dir": "spool", "mail_dir": "mail", "run_dir": "run", "log_dir": "log"}


class DevBoxError(Exception):
    pass


def paths_under(d: Path) -> dict[str, str]:
    """The [paths] table of a box whose state all lives under D (dev boxes, test configs)."""
    return {key: str(d / sub) for key, sub in DEV_PATHS.items()}


@dataclass
class DevBox:
    dir: Path
    config_file: Path
    ports: dict[str, int]


def free_port(host: str) -> int:
    """A port the OS says is free on HOST now (tests and `--base-port 0`)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def pick_ports(host: str, base_port: int) -> dict[str, int]:
    if base_port == 0:
        ports: dict[str, int] = {}
        for name in LISTENER_ORDER:
            p = free_port(host)
            while p in ports.values():
                p = free_port(host)
            ports[name] = p
        return ports
    if not 1024 <= base_port <= 65535 - len(LISTENER_ORDER):
        raise DevBoxError(f"--base-port {base_port}: must be 0 (let the OS pick) or 1024..{65535 - len(LISTENER_ORDER)}")
    return {name: base_port + i for i, name in enumerate(LISTENER_ORDER)}


def dev_member_id(domain: str) -> str:
    return domain.split(".")[0]


def init_dev(
    directory: str | Path,
    domain: str = "example.test",
    base_port: int = 10025,
    host: str = "127.0.0.1",
    hostname: str | None = None,
    force: bool = False,
    internet: bool = False,
) -> DevBox:
    d = Path(directory).resolve()
    cfg_file = d / "appliance.toml"
    if cfg_file.exists() and not force:
        raise DevBoxError(f"{cfg_file} already exists (use --force to overwrite)")
    domain = config_mod.check_domain(domain)
    hostname = hostname or f"mx.{domain}"
    ports = pick_ports(host, base_port)
    for sub in ("etc/tls", "etc/dkim", *DEV_PATHS.values()):
        (d / sub).mkdir(parents=True, exist_ok=True)

    cert, key = d / "etc/tls/cert.pem", d / "etc/tls/key.pem"
    # The well-known listener's names too (mta-sts., autoconfig., autodiscover.DOMAIN), so a client
    # trusting the dev certificate can fetch them with verification (curl --resolve).
    make_self_signed(cert, key, [hostname, "localhost", host, *(f"{label}.{domain}" for label in WEB_NAMES)])
    dkim_key = d / "etc/dkim/mail.key"
    txt = make_dkim_key(dkim_key)
    (d / "etc/dkim/mail.txt").write_text(f"mail._domainkey.{domain}. IN TXT \"{txt}\"\n")

    member_id = dev_member_id(domain)
    data = {
        "box": {
            "role": "member",
            "hostname": hostname,
            "domains": [domain],
            "member_id": member_id,
            "postmaster": f"postmaster@{domain}",
        },
        "paths": paths_under(d),
        "tls": {"cert": str(cert), "key": str(key), "source": "self-signed"},
        "dkim": {"selector": "mail", "key": str(dkim_key)},
        "listeners": {
            name: {"host": "127.0.0.1" if name in ("metrics", "access_metrics", "console") else host, "port": port, "tls": LISTENER_TLS[name]}
            for name, port in ports.items()
        },
        # --internet: port 25 also takes mail from outside the consortium, verified (docs/internet.md).
        "relay": {"ca_file": str(cert), **({"outsiders": "verify"} if internet else {})},
        # A real TUF repository under DIR, synced through a file:// URL (no web server needed);
        # `appliance registry serve DIR/registry-repo` serves the same tree over HTTP.
        "registry": {
            "url": (d / "registry-repo" / "public").as_uri(),
            "root": str(d / "etc" / "registry-root.json"),
            "poll_interval": 30,
            "firewall": "off",
        },
    }
    # Validate what we are about to write with the same schema every box uses.
    config_mod.parse(data, str(cfg_file))
    cfg_file.write_text(
        "# Development box written by `appliance init --dev`; every path is under this directory.\n"
        "# Reference: docs/configuration.md\n" + tomli_w.dumps(data)
    )

    registry = {
        "consortium": "Development consortium",
        "code_of_practice": "2026-1",
        "members": [
            {
                "id": member_id,
                "name": f"Development box {hostname}",
                "status": "active",
                "abuse": f"abuse@{domain}",
                "domains": [domain],
                "relays": [
                    {
                        "host": host,
                        "port": ports["mx"],
                        "addresses": [f"{host}/32" if ":" not in host else f"{host}/128"],
                        # No pins by default, so plain swaks/Postfix peers can reach the MX from
                        # loopback; `appliance registry update-member --pin` adds them.
                        "spki_sha256": [],
                    }
                ],
                "limits": {"messages_per_minute": 600, "burst": 200, "connections": 20},
            }
        ],
    }
    make_dev_registry(d, registry, config_mod.load(cfg_file))
    return DevBox(d, cfg_file, ports)


def make_dev_registry(d: Path, registry: dict[str, object], cfg: config_mod.Config) -> None:
    """The one-member registry as a signed TUF repository, pinned and synced once.

    Keys go to DIR/registry-keys (0600), the operator directory to DIR/registry-repo
    (published tree in its public/), the pinned root to DIR/etc/registry-root.json.
    """
    from appliance.registry.agent import run_round
    from appliance.registry.repo import init_repo

    repo_dir, keys_dir = d / "registry-repo", d / "registry-keys"
    # --force: a new repository with new keys; the box forgets the old one's metadata.
    for old in (repo_dir, keys_dir, cfg.registry_dir):
        shutil.rmtree(old, ignore_errors=True)
    # Long expiries: a dev box left alone for a week should not start answering its members 421.
    repo = init_repo(repo_dir, keys_dir, registry=registry, consortium=str(registry["consortium"]),
                     code_of_practice=str(registry["code_of_practice"]),
                     expiry_days={"timestamp": 90, "snapshot": 90, "targets": 90})
    shutil.copyfile(repo.metadata_dir / "1.root.json", cfg.registry.root)
    res = run_round(cfg)
    if not res.ok:
        raise DevBoxError(f"the development registry does not sync: {res.message}")
