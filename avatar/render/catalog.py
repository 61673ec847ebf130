"""The avatar catalogue: which avatars exist and how to load one.

Two kinds live side by side:

* illustrated avatars: ``<assets>/avatars/<name>/rig.yaml`` (see ``avatar.render.rig``);
* photo avatars: a directory whose ``avatar.json`` says ``"kind": "photo"``, shipped in
  ``<assets>/avatars/<name>/`` or added by users in ``<data_dir>/avatars/<name>/``
  (``avatar avatars add``). Their renderer module is imported only when one is loaded.

Built-in avatars win over user avatars of the same name (a user cannot shadow them). The
directories are scanned on every ``list``/``get`` so avatars added while the server runs
appear at once. One catalogue serves the whole process: it is thread-safe and keeps only
immutable things (parsed rigs and pre-drawn illustrated art); every ``load`` returns a new
renderer, because renderers cache per stage.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from avatar.render.base import AvatarRenderer
from avatar.render.rig import NAME_PATTERN, Rig, RigError, load_rig

if TYPE_CHECKING:  # the renderers pull in cv2: imported when an avatar is loaded
    from avatar.render.illustrated import IllustratedArt

log = logging.getLogger(__name__)

AvatarKind = Literal["illustrated", "photo"]

_ART_CACHE_SIZE = 8  # prepared (rig, size) pairs kept; each is a few MB at 512x512


class UnknownAvatar(KeyError):
    """No usable avatar of that name. ``args[0]`` is a message fit for the user."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "unknown avatar"


@dataclass(frozen=True)
class AvatarInfo:
    name: str
    kind: AvatarKind
    title: str
    path: Path  # the avatar's directory


def default_assets_dir() -> Path:
    """The repository's ``assets/`` directory (built-in avatars, knowledge bases)."""
    return Path(__file__).resolve().parents[2] / "assets"


class AvatarCatalog:
    """Lists and loads the avatars under ``assets_dir/avatars`` and ``data_dir/avatars``."""

    def __init__(self, assets_dir: Path, data_dir: Path) -> None:
        self.assets_dir = Path(assets_dir)
        self.data_dir = Path(data_dir)
        self._lock = threading.Lock()
        self._rigs: dict[Path, tuple[int, Rig]] = {}  # rig.yaml -> (mtime_ns, parsed rig)
        self._art: OrderedDict[tuple[Path, int, int, int], IllustratedArt] = OrderedDict()

    # ------------------------------------------------------------------ listing

    def list(self) -> list[AvatarInfo]:
        """Every usable avatar: built-in ones first, then the user's, each sorted by name.
        Broken avatars are left out (and logged), so a bad upload cannot break the list."""
        found: dict[str, AvatarInfo] = {}
        for root in self._roots():
            if not root.is_dir():
                continue
            for directory in sorted(root.iterdir()):
                name = directory.name
                if name in found or not directory.is_dir() or not NAME_PATTERN.match(name):
                    continue
                try:
                    info = self._describe(directory)
                except UnknownAvatar as exc:
                    log.warning("skipping avatar %s: %s", name, exc)
                    continue
                if info is not None:
                    found[name] = info
        return list(found.values())

    def get(self, name: str) -> AvatarInfo:
        """The avatar called ``name``. Raises ``UnknownAvatar`` (with a message saying why) for a
        malformed name, a name nobody has, or an avatar whose files are broken."""
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise UnknownAvatar(
                f"invalid avatar name {name!r}: use lowercase letters, digits, '-' and '_' (at most 64)"
            )
        for root in self._roots():
            directory = root / name
            if directory.is_dir():
                info = self._describe(directory)
                if info is not None:
                    return info
        names = ", ".join(a.name for a in self.list()) or "none"
        raise UnknownAvatar(f"unknown avatar {name!r} (available: {names})")

    # ------------------------------------------------------------------ loading

    def load(self, name: str, width: int, height: int) -> AvatarRenderer:
        """A new renderer for avatar ``name`` drawing ``width`` x ``height`` frames.

        Raises ``UnknownAvatar`` as ``get`` does, and ``ValueError`` for a size the renderer
        cannot draw (odd or out of range)."""
        info = self.get(name)
        if info.kind == "photo":
            return self._load_photo(info, width, height)
        from avatar.render.illustrated import IllustratedArt, IllustratedRenderer

        rig = self._rig(info.path / "rig.yaml")
        key = (rig.path, id(rig), width, height)
        with self._lock:
            art = self._art.get(key)
            if art is not None:
                self._art.move_to_end(key)
        if art is None:
            # Drawn outside the lock: two first loads may both draw, which is harmless.
            art = IllustratedArt.prepare(rig, width, height)
            with self._lock:
                self._art[key] = art
                while len(self._art) > _ART_CACHE_SIZE:
                    self._art.popitem(last=False)
        return IllustratedRenderer(rig, width, height, art=art)

    def _load_photo(self, info: AvatarInfo, width: int, height: int) -> AvatarRenderer:
        from avatar.render.photo import load_photo_avatar

        try:
            return load_photo_avatar(info.path, width, height)
        except (OSError, ValueError) as exc:
            raise UnknownAvatar(f"avatar {info.name!r} cannot be loaded: {exc}") from exc

    # ------------------------------------------------------------------ internals

    def _roots(self) -> tuple[Path, Path]:
        return (self.assets_dir / "avatars", self.data_dir / "avatars")

    def _describe(self, directory: Path) -> AvatarInfo | None:
        """What ``directory`` holds, ``None`` when it holds no avatar at all; ``UnknownAvatar``
        when its avatar files are broken."""
        name = directory.name
        rig_file = directory / "rig.yaml"
        if rig_file.is_file():
            rig = self._rig(rig_file)
            if rig.name != name:
                raise UnknownAvatar(
                    f"avatar {name!r} is broken: {rig_file}: name: {rig.name!r} must equal the directory name"
                )
            return AvatarInfo(name, "illustrated", rig.title, directory)
        meta_file = directory / "avatar.json"
        if meta_file.is_file():
            try:
                meta = json.loads(meta_file.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise UnknownAvatar(f"avatar {name!r} is broken: {meta_file}: {exc}") from exc
            if not isinstance(meta, dict) or meta.get("kind") != "photo":
                kind = meta.get("kind") if isinstance(meta, dict) else None
                raise UnknownAvatar(
                    f"avatar {name!r} is broken: {meta_file}: kind is {kind!r}, expected 'photo'"
                )
            title = meta.get("title")
            return AvatarInfo(name, "photo", title if isinstance(title, str) and title else name, directory)
        return None

    def _rig(self, path: Path) -> Rig:
        """The parsed rig, re-read only when the file changes. ``UnknownAvatar`` if invalid."""
        try:
            mtime = path.stat().st_mtime_ns
        except OSError as exc:
            raise UnknownAvatar(
                f"avatar {path.parent.name!r} is broken: {path}: {exc.strerror or exc}"
            ) from exc
        with self._lock:
            cached = self._rigs.get(path)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        try:
            rig = load_rig(path)
        except RigError as exc:
            raise UnknownAvatar(f"avatar {path.parent.name!r} is broken: {exc}") from exc
        with self._lock:
            self._rigs[path] = (mtime, rig)
        return rig
