"""Engines loaded once per process and shared by every session (they hold no
per-conversation state): TTS, the avatar catalogue, the render thread pool, the brain, and
the listening side (voice activity detection, speech recognition, their thread pool)."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from avatar.config import Settings
from avatar.render.catalog import AvatarCatalog, default_assets_dir
from avatar.speech.asr.base import ASRError, SpeechRecognizer
from avatar.speech.tts.registry import TTSRegistry
from avatar.speech.vad import VoiceActivityDetector

log = logging.getLogger(__name__)


@dataclass
class Engines:
    settings: Settings
    tts: TTSRegistry
    catalog: AvatarCatalog
    render_pool: ThreadPoolExecutor
    brain: Any = None  # avatar.brain.Brain when loaded
    brain_loading: asyncio.Task[Any] | None = None  # the brain learning in the background
    _face_tracker: Any = None
    _face_lock: threading.Lock = field(default_factory=threading.Lock)
    # Per-frame listening work (resampling, VAD, echo guard) of every session: a pool of its
    # own, so a busy render pool never delays hearing the customer.
    listen_pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=2, thread_name_prefix="listen")
    )
    _vad: VoiceActivityDetector | None = None
    _recognizer: SpeechRecognizer | None = None
    _recognizer_error: ASRError | None = None
    _listen_lock: threading.Lock = field(default_factory=threading.Lock)
    _prompts: dict[str, str] = field(default_factory=dict)  # by language, for _prompts_brain
    _prompts_brain: Any = None

    def face_tracker(self) -> Any:
        """The mediapipe face tracker, loaded on first use (only mirror/puppet sessions need it)."""
        with self._face_lock:
            if self._face_tracker is None:
                from avatar.face.landmarks import FaceTracker

                self._face_tracker = FaceTracker(max_faces=1)
            return self._face_tracker

    def vad(self) -> VoiceActivityDetector:
        """The Silero VAD engine, loaded on first use (blocking: call it off the event loop).
        Raises ``avatar.speech.vad.VadError`` when the model cannot be loaded."""
        with self._listen_lock:
            if self._vad is None:
                self._vad = VoiceActivityDetector()
            return self._vad

    def recognizer(self) -> SpeechRecognizer:
        """The configured speech recogniser (``asr_*`` settings), loaded on first use (blocking:
        about half a second for a local model; call it off the event loop).

        Raises ``ASRError`` saying what is wrong (missing model, bad URL); a failed load is
        remembered and raised again without retrying, so a broken model costs one attempt."""
        with self._listen_lock:
            if self._recognizer is not None:
                return self._recognizer
            if self._recognizer_error is not None:
                raise self._recognizer_error
            from avatar.speech.asr.registry import ASRSettings, build_recognizer

            s = self.settings
            asr = ASRSettings(
                engine=s.asr_engine,
                model_dir=s.asr_model_dir,
                cpu_threads=s.asr_cpu_threads,
                window=s.asr_window,
                url=s.asr_url,
                model=s.asr_model,
                api_key=s.asr_api_key,
                timeout=s.asr_timeout,
            )
            try:
                self._recognizer = build_recognizer(asr)
            except ASRError as exc:
                self._recognizer_error = exc
                raise
            except Exception as exc:  # a broken install: reported like any recogniser failure
                self._recognizer_error = ASRError(f"cannot start speech recognition: {exc}")
                raise self._recognizer_error from exc
            return self._recognizer

    def asr_prompt(self, lang: str | None) -> str:
        """The recognition prompt for ``lang``: knowledge-base terms (when a brain with a
        knowledge base is loaded) first, then the built-in banking words. An English-only
        recogniser always gets the English prompt. Rebuilt when the brain changes (it may finish
        loading after the first customers)."""
        from avatar.speech.asr.prompt import domain_prompt

        if self._recognizer is not None and getattr(self._recognizer, "multilingual", True) is False:
            lang = "en"
        key = "zh" if (lang or "").lower().startswith("zh") else "en"
        brain = self.brain
        if brain is not self._prompts_brain:
            self._prompts, self._prompts_brain = {}, brain
        prompt = self._prompts.get(key)
        if prompt is None:
            prompt = self._prompts[key] = domain_prompt(brain_vocabulary(brain, key), key)
        return prompt

    async def warm_up(self) -> None:
        """Load the offline voices, the default avatar's art and the listening engines now, so
        the first customer does not wait for them."""
        s = self.settings
        try:
            await asyncio.to_thread(self.catalog.load, s.default_avatar, s.width, s.height)
        except Exception as exc:
            log.warning("default avatar %r could not be loaded: %s", s.default_avatar, exc)
        try:
            await self.tts.warm_up([self.tts.offline_voice("en"), self.tts.offline_voice("zh")])
        except Exception as exc:  # a broken voice must not stop the server; speaking reports it
            log.warning("TTS warm-up failed: %s", exc)
        try:
            await asyncio.to_thread(self.vad)
        except Exception as exc:  # customers can still type; each voice session reports it
            log.warning("voice activity detection unavailable: %s", exc)
        try:
            await asyncio.to_thread(self.recognizer)
        except ASRError as exc:  # each spoken turn apologises and logs it
            log.warning("speech recognition unavailable: %s", exc)

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
        self.listen_pool.shutdown(wait=False, cancel_futures=True)
        self.tts.close()  # its own synthesis pool

    async def aclose(self) -> None:
        """``close``, after releasing the recogniser (its worker thread or HTTP connections)."""
        recognizer, self._recognizer = self._recognizer, None
        if recognizer is not None:
            try:
                await recognizer.aclose()
            except Exception as exc:
                log.warning("closing the speech recogniser failed: %s", exc)
        self.close()


def brain_vocabulary(brain: Any, lang: str) -> list[str]:
    """Words the knowledge base uses, to bias recognition towards them.

    Asks ``brain.vocabulary(lang)`` when the brain offers it; otherwise takes the product and
    scenario names of the brain's knowledge base (``brain.kb.entries``) in ``lang``. No
    brain, or one with neither, gives no words (the built-in banking words still apply)."""
    if brain is None:
        return []
    vocabulary = getattr(brain, "vocabulary", None)
    if callable(vocabulary):
        return [str(word) for word in vocabulary(lang)]
    entries = getattr(getattr(brain, "kb", None), "entries", None)
    if not isinstance(entries, Mapping):
        return []
    words: list[str] = []
    for entry in entries.values():
        if getattr(entry, "lang", None) != lang:
            continue
        for name in (getattr(entry, "product_name", None), getattr(entry, "scenario_name", None)):
            if name and name not in words:
                words.append(str(name))
    return words
