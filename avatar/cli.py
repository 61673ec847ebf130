"""The ``avatar`` command. Each feature module registers its own subcommand.

A command module exposes ``register(subparsers) -> None``; the parser it adds sets
``func=callable(args) -> int`` with ``set_defaults``. Registration must stay cheap
(argparse only): heavy imports happen inside ``func``.

Errors a user can fix are raised as ``CliError`` and reported as one line on stderr
with exit code 2; nothing prints a traceback for bad input.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

COMMAND_MODULES: tuple[str, ...] = (
    "avatar.server.cli",
    "avatar.render.cli",
    "avatar.avatars_cli",
    "avatar.operator.cli",
    "avatar.brain.cli",
    "avatar.config_cli",
    "avatar.broadcast.cli",
)


class CliError(Exception):
    """A user-facing error: printed as one line on stderr, exit code ``code``."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avatar", description="Digital-human avatar streaming server.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def _version() -> str:
    from avatar import __version__

    return f"avatar {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except CliError as exc:
        print(f"avatar: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    return int(result or 0)
