"""``avatar config check FILE``: validate a configuration file without starting anything.

Exit 0 with a one-line summary when the file is valid; exit 2 with one line naming the key
when it is not. Only the file is checked (``AVATAR_*`` variables are ignored), so the answer
is the same on every machine the file is copied to.
"""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("config", help="check a configuration file")
    actions = p.add_subparsers(dest="config_command", metavar="ACTION")
    actions.required = True
    check = actions.add_parser("check", help="validate a TOML configuration file (exit 2 naming the bad key)")
    check.add_argument("file", type=Path, help="the TOML file")
    check.set_defaults(func=run_check)


def summary(path: Path, settings: Any, keys: int) -> str:
    """One line describing a valid configuration."""
    scheme = "https" if settings.tls_cert else "http"
    turn = "TURN credentials on" if settings.turn_secret else "no TURN credentials"
    return (
        f"{path}: valid ({keys} keys set): {scheme}://{settings.host}:{settings.port}/, "
        f"max {settings.max_sessions} sessions, driver {settings.driver}, {turn}, logs {settings.log_format}"
    )


def run_check(args: argparse.Namespace) -> int:
    from avatar.cli import CliError
    from avatar.config import ConfigError, load_settings

    path: Path = args.file
    try:
        settings = load_settings(path, env={})
    except ConfigError as exc:
        raise CliError(f"configuration: {exc}") from exc
    doc = tomllib.loads(path.read_text(encoding="utf-8"))
    keys = sum(len(v) if isinstance(v, dict) and k not in ("voices",) else 1 for k, v in doc.items())
    print(summary(path, settings, keys))
    return 0
