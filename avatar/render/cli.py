"""``avatar render``: write an MP4 of the avatar saying a text."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("render", help="render a clip of the avatar saying a text (MP4)")
    p.add_argument("--text", required=True, help="what the avatar says (English or Chinese)")
    p.add_argument("--out", required=True, type=Path, help="output file (.mp4)")
    p.add_argument("--avatar", help="avatar name (default: the configured default avatar)")
    p.add_argument("--tts", dest="engine", help="TTS engine: piper, espeak or edge (default: configured voice)")
    p.add_argument("--voice", help="voice name for the engine (e.g. en_US-joe-medium, cmn, zh-CN-XiaoxiaoNeural)")
    p.add_argument("--fps", type=int, help="frames per second (default: configured, 25)")
    p.add_argument("--size", help="WIDTHxHEIGHT (default: configured, 512x512)")
    p.add_argument("--config", type=Path, help="TOML configuration file")
    p.add_argument("--data-dir", type=Path, help="data directory (for photo avatars)")
    p.set_defaults(func=run)


class ProgressBar:
    """A one-line progress bar on stderr, shown only on a terminal."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.enabled = sys.stderr.isatty()
        self.started = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or (done % 5 and done != total):
            return
        width = 30
        filled = int(width * done / max(total, 1))
        elapsed = time.monotonic() - self.started
        sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} frames {elapsed:5.1f}s")
        if done == total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def run(args: argparse.Namespace) -> int:
    from avatar.cli import CliError
    from avatar.offline import render_clip, resolve_voice
    from avatar.render.catalog import AvatarCatalog, UnknownAvatar, default_assets_dir
    from avatar.server.cli import settings_from_args
    from avatar.speech.tts.base import TTSError
    from avatar.speech.tts.registry import TTSRegistry

    text = args.text.strip()
    if not text:
        raise CliError("--text must not be empty")
    if args.out.suffix.lower() != ".mp4":
        raise CliError(f"--out {args.out}: the output must be an .mp4 file")
    extra: dict[str, Any] = {}
    if args.fps is not None:
        extra["fps"] = args.fps
    if args.size:
        try:
            w, h = (int(x) for x in args.size.lower().split("x"))
        except ValueError as exc:
            raise CliError(f"--size {args.size!r}: expected WIDTHxHEIGHT, e.g. 512x512") from exc
        extra.update(width=w, height=h)
    settings = settings_from_args(args, **extra)
    if args.engine not in (None, "piper", "espeak", "edge"):
        raise CliError(f"--tts {args.engine!r}: choose piper, espeak or edge")
    name = args.avatar or settings.default_avatar
    catalog = AvatarCatalog(default_assets_dir(), settings.data_dir)
    try:
        renderer = catalog.load(name, settings.width, settings.height)
    except UnknownAvatar as exc:
        raise CliError(str(exc.args[0] if exc.args else exc), code=2) from exc
    tts = TTSRegistry(settings)
    voice = resolve_voice(settings, tts, name, text, args.engine, args.voice)
    # The avatar's own voices: each language's part of a mixed line in its voice, as live. A
    # voice chosen on the command line speaks the whole line.
    own = args.engine is None and args.voice is None
    try:
        info = render_clip(
            text,
            args.out,
            renderer,
            tts,
            voice,
            settings.fps,
            progress=ProgressBar(f"rendering {args.out.name}"),
            voice_for=(lambda lang: tts.voice_for(name, lang)) if own else None,
        )
    except TTSError as exc:
        raise CliError(f"speech synthesis failed: {exc}") from exc
    except OSError as exc:
        raise CliError(f"cannot write {args.out}: {exc.strerror or exc}") from exc
    print(f"wrote {info.path} ({info.duration:.1f} s, {info.frames} frames, {info.sentences} sentence(s), avatar {name}, voice {voice.engine}:{voice.voice or 'default'})")
    return 0
