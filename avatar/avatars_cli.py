"""``avatar avatars add|list|remove``: manage the avatar catalogue's user avatars.

User avatars live in ``<data_dir>/avatars/<name>/``; the built-in ones ship in
``assets/avatars/<name>/`` and can be listed but not removed or shadowed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ASSETS_AVATARS = Path(__file__).resolve().parent.parent / "assets" / "avatars"
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")  # the catalogue's avatar names


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("avatars", help="add, list or remove avatars")
    actions = p.add_subparsers(dest="avatars_action", metavar="ACTION")
    actions.required = True

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--data-dir", type=Path, help="where user avatars live (default ./data; AVATAR_DATA_DIR)")
        q.add_argument("--config", type=Path, help="TOML configuration file (AVATAR_CONFIG)")

    add = actions.add_parser("add", help="build a photo avatar from a portrait (JPEG or PNG)")
    add.add_argument("name", help="avatar name: lower-case letters, digits, '-' and '_'")
    add.add_argument("--photo", type=Path, required=True, help="portrait of one person looking into the camera")
    add.add_argument("--title", help="display title (default: from the name)")
    add.add_argument("--source", help="where the photo comes from (stored in avatar.json)")
    add.add_argument("--replace", action="store_true", help="replace an existing user avatar of that name")
    common(add)
    add.set_defaults(func=run_add)

    lst = actions.add_parser("list", help="list built-in and user avatars")
    common(lst)
    lst.set_defaults(func=run_list)

    rm = actions.add_parser("remove", help="remove a user avatar")
    rm.add_argument("name")
    common(rm)
    rm.set_defaults(func=run_remove)


def _settings(args: argparse.Namespace) -> Any:
    from avatar.cli import CliError
    from avatar.config import ConfigError, load_settings

    config = args.config or (Path(os.environ["AVATAR_CONFIG"]) if os.environ.get("AVATAR_CONFIG") else None)
    try:
        return load_settings(config, overrides={"data_dir": args.data_dir})
    except ConfigError as exc:
        raise CliError(f"configuration: {exc}") from exc


def _check_name(name: str) -> None:
    from avatar.cli import CliError

    if not NAME_PATTERN.match(name):
        raise CliError(f"invalid avatar name {name!r}: use lower-case letters, digits, '-' and '_' (at most 64)")


@contextmanager
def _native_logs_silenced() -> Iterator[None]:
    """Mute what mediapipe's C++ side writes straight to file descriptor 2 (TFLite and absl
    start-up notices no user can act on); Python's own errors are reported after it."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no usable stderr: nothing to protect
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _describe(path: Path) -> tuple[str, str]:
    """(kind, title) of an avatar directory, from its avatar.json or rig."""
    meta_file = path / "avatar.json"
    if meta_file.is_file():
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
            return str(meta.get("kind", "?")), str(meta.get("title", path.name))
        except (OSError, ValueError):
            return "broken", "(unreadable avatar.json)"
    if (path / "rig.yaml").is_file():
        return "illustrated", path.name
    return "unknown", ""


def run_add(args: argparse.Namespace) -> int:
    from avatar.cli import CliError
    from avatar.render.photo_build import PhotoAvatarError, build_photo_avatar

    _check_name(args.name)
    if (ASSETS_AVATARS / args.name).is_dir():
        raise CliError(f"{args.name!r} is a built-in avatar; choose another name")
    settings = _settings(args)
    avatars_dir = settings.data_dir / "avatars"
    try:
        with _native_logs_silenced():
            info = build_photo_avatar(
                args.photo,
                avatars_dir,
                args.name,
                title=args.title,
                source=args.source,
                width=settings.width,
                height=settings.height,
                replace=args.replace,
            )
    except PhotoAvatarError as exc:
        hint = " (use --replace to rebuild it)" if exc.reason == "exists" else ""
        raise CliError(f"{exc}{hint}") from exc
    except OSError as exc:
        raise CliError(f"cannot write {avatars_dir}: {exc.strerror or exc}") from exc
    print(f"avatar: added photo avatar {info.name!r} ({info.title}) in {info.path}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    settings = _settings(args)
    rows = []
    for where, root in (("built-in", ASSETS_AVATARS), ("user", settings.data_dir / "avatars")):
        if not root.is_dir():
            continue
        for path in sorted(root.iterdir()):
            if path.is_dir() and not path.name.startswith("."):
                kind, title = _describe(path)
                rows.append((path.name, kind, where, title))
    if not rows:
        print("no avatars")
        return 0
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for name, kind, where, title in rows:
        print(f"{name:<{widths[0]}}  {kind:<{widths[1]}}  {where:<{widths[2]}}  {title}")
    return 0


def run_remove(args: argparse.Namespace) -> int:
    from avatar.cli import CliError

    _check_name(args.name)
    settings = _settings(args)
    avatars_dir = settings.data_dir / "avatars"
    target = avatars_dir / args.name
    if not target.is_dir():
        if (ASSETS_AVATARS / args.name).is_dir():
            raise CliError(f"{args.name!r} is a built-in avatar and cannot be removed")
        raise CliError(f"no user avatar named {args.name!r} in {avatars_dir}")
    # Rename first, so a running server never sees a half-deleted avatar.
    trash = Path(tempfile.mkdtemp(prefix=f".{args.name}.removing-", dir=avatars_dir))
    try:
        os.replace(target, trash / args.name)
    except OSError as exc:
        shutil.rmtree(trash, ignore_errors=True)
        raise CliError(f"cannot remove {target}: {exc.strerror or exc}") from exc
    shutil.rmtree(trash, ignore_errors=True)
    print(f"avatar: removed {args.name!r}")
    return 0
