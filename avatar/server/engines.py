"""Engines loaded once per process and shared by every session (they hold no
per-conversation state): TTS, the avatar catalogue, the render thread pool, the brain."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from avatar.config import Settings
from avatar.render.catalog import AvatarCatalog, default_assets_dir
from avatar.speech.tts.registry import TTSRegistry

log = logging.getLogger(__name__)


@dataclass
class Engines:
    settings: Settings
    tts: TTSRegistry
    catalog: AvatarCatalog
    render_pool: ThreadPoolExecutor
    brain: Any = None  # avatar.brain.Brain when loaded
    extra: dict[str, Any] = field(default_factory=dict)
    _face_tracker: Any = None
    _face_lock: threading.Lock = field(default_factory=threading.Lock)

    def face_tracker(self) -> Any:
        """The mediapipe face tracker, loaded on first use (only mirror/puppet sessions need it)."""
        with self._face_lock:
            if self._face_tracker is None:
                from avatar.face.landmarks import FaceTracker

                self._face_tracker = FaceTracker(max_faces=1)
            return self._face_tracker

    async def warm_up(self) -> None:
        """Load the offline voices and the default avatar's art now, so the first customer does
        not wait for them."""
        s = self.settings
        try:
            await asyncio.to_thread(self.catalog.load, s.default_avatar, s.width, s.height)
        except Exception as exc:
            log.warning("default avatar %r could not be loaded: %s", s.default_avatar, exc)
        try:
            await self.tts.warm_up([self.tts.offline_voice("en"), self.tts.offline_voice("zh")])
        except Exception as exc:  # a broken voice must not stop the server; speaking reports it
            log.warning("TTS warm-up failed: %s", exc)

    @classmethod
    def build(cls, settings: Settings, assets_dir: Path | None = None) -> Engines:
        assets = assets_dir or default_assets_dir()
        workers = max(2, (os.cpu_count() or 2))
        return cls(
            settings=settings,
            tts=TTSRegistry(settings),
            catalog=AvatarCatalog(assets, settings.data_dir),
            render_pool=ThreadPoolExecutor(max_workers=workers, thread_name_prefix="render"),
        )

    def close(self) -> None:
        self.render_pool.shutdown(wait=False, cancel_futures=True)
