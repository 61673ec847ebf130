"""``avatar serve``: start the server."""

from __future__ import annotations

import argparse
import ssl
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("serve", help="start the avatar server")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1; AVATAR_HOST)")
    p.add_argument("--port", type=int, help="TCP port (default 8080; AVATAR_PORT)")
    p.add_argument("--config", type=Path, help="TOML configuration file (AVATAR_CONFIG)")
    p.add_argument("--data-dir", type=Path, help="where all state lives (default ./data; AVATAR_DATA_DIR)")
    p.add_argument("--redis", metavar="URL", help="share sessions with other processes through Redis (AVATAR_REDIS_URL)")
    p.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace, **extra: Any) -> Any:
    """Settings from defaults, --config (or AVATAR_CONFIG), AVATAR_* and the flags given."""
    import os

    from avatar.cli import CliError
    from avatar.config import ConfigError, load_settings

    config = getattr(args, "config", None) or (Path(os.environ["AVATAR_CONFIG"]) if os.environ.get("AVATAR_CONFIG") else None)
    overrides = {
        "host": getattr(args, "host", None),
        "port": getattr(args, "port", None),
        "data_dir": getattr(args, "data_dir", None),
        "redis_url": getattr(args, "redis", None),
        **extra,
    }
    try:
        return load_settings(config, overrides=overrides)
    except ConfigError as exc:
        raise CliError(f"configuration: {exc}") from exc


def run(args: argparse.Namespace) -> int:
    from aiohttp import web

    from avatar.cli import CliError
    from avatar.cluster.base import ClusterUnavailable
    from avatar.logs import configure_logging
    from avatar.server.access_log import access_logger
    from avatar.server.app import create_app
    from avatar.server.security import ssl_context

    settings = settings_from_args(args)
    try:
        tls = ssl_context(settings)
    except (OSError, ssl.SSLError) as exc:
        raise CliError(f"configuration: tls_cert/tls_key: cannot load {settings.tls_cert}: {exc}") from exc
    # log_format "json": one object per line with the session id; faster-whisper and aioice are
    # kept at WARNING (one INFO line per recognition / candidate otherwise).
    configure_logging(settings.log_level, settings.log_format)
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"data directory {settings.data_dir}: {exc.strerror}") from exc
    if settings.redis_url:
        from avatar.cluster.redis_cluster import check_reachable

        problem = check_reachable(settings.redis_url)
        if problem is not None:
            raise CliError(problem)
    app = create_app(settings)
    scheme = "https" if tls is not None else "http"
    print(f"avatar: starting: loading voices and models (data in {settings.data_dir.resolve()})", flush=True)

    async def announce(_app: web.Application) -> None:
        # Runs after the engines' start-up (a minute on a busy machine), just before the socket
        # listens: a reader who opens the address on this line gets the page, not a refusal.
        print(f"avatar: serving on {scheme}://{settings.host}:{settings.port}/", flush=True)

    app.on_startup.append(announce)
    try:
        web.run_app(
            app,
            host=settings.host,
            port=settings.port,
            ssl_context=tls,
            print=None,
            shutdown_timeout=5.0,
            # No secrets or personal data from URLs in the log (avatar.server.access_log).
            access_log_class=access_logger(settings.access_log_ips, settings.trusted_proxies),
        )
    except OSError as exc:
        raise CliError(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}") from exc
    except ValueError as exc:  # a knowledge base or avatar that cannot be loaded at start
        raise CliError(str(exc)) from exc
    except ClusterUnavailable as exc:  # Redis went away between the check and the start
        raise CliError(str(exc)) from exc
    return 0
