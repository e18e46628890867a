"""`python -m services.relay -c CONFIG`: the SMTP relay (run by supervisor).

The config is loaded and checked once, before anything listens; a bad one is
refused with one line and exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sqlite3
import sys

from appliance.config import Config, ConfigError, load

EXIT_CONFIG = 2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m services.relay", description="ISP Mail Appliance SMTP relay")
    p.add_argument("-c", "--config", default=None, help="config file (default: $APPLIANCE_CONFIG or /etc/appliance/appliance.toml)")
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return p.parse_args(argv)


async def serve(cfg: Config) -> int:
    from services.relay.app import RelayApp, StartupError
    from services.relay.tls import TlsSetupError

    try:
        app = RelayApp(cfg)
        await app.start()
    except (StartupError, TlsSetupError, ConfigError) as exc:  # ConfigError: e.g. state.redis_password_file
        print(f"relay: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (OSError, sqlite3.Error) as exc:
        print(f"relay: cannot start: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, app.stopping.set)
    await app.stopping.wait()
    logging.getLogger("relay").info("stopping")
    await app.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # aiosmtpd logs every command line at INFO (including AUTH blobs); keep it quiet.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    try:
        cfg = load(args.config)
    except ConfigError as exc:
        print(f"relay: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        import uvloop
    except ImportError:  # pragma: no cover - it is a dependency, but the relay works without it
        return asyncio.run(serve(cfg))
    return uvloop.run(serve(cfg))


if __name__ == "__main__":
    sys.exit(main())
