"""Engines loaded once per process and shared by every session (they hold no
per-conversation state): TTS, the avatar catalogue, the render thread pool, the brain."""

from __future__ import annotations

import logging
import os
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
