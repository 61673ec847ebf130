"""The process's TTS engines, the voice each avatar speaks with, and the offline fallback.

Engines are created on first use, once per registry (one registry per process, built from
``Settings``), and shared by every session. ``TTSRegistry.synthesize`` never leaves the
avatar silent while an offline engine can speak: when the chosen engine fails, or takes
longer than ``Settings.tts_fallback_timeout``, the sentence is spoken by the offline engine
for its language (piper for English, espeak ``cmn`` for Mandarin), and by espeak as the
last resort.

Synthesis runs on the registry's own small thread pool (``TTS_WORKERS`` threads), not on
asyncio's default executor, where aiortc encodes every session's audio and video frames: a few
voices speaking at once must not delay every session's frames, nor wait behind them.

One line said by many sessions (an operator broadcasting to ten avatars) is synthesised once:
finished sentences are kept in a small LRU cache keyed by (voice, sentence), and a sentence
already being synthesised is awaited, not synthesised again. Only a chunk the requested
engine spoke is cached (a fallback's stand-in is not), and cached chunks are read-only: they
are shared by every session that says the line.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from avatar.config import Settings
from avatar.speech.phonemize import Phonemizer
from avatar.speech.tts.base import TTSEngine, TTSError, Voice
from avatar.timeline import SpeechChunk

log = logging.getLogger(__name__)

ENGINE_NAMES = ("piper", "espeak", "edge")
# The offline voice of each language, and espeak's, the last resort.
OFFLINE_VOICES = {
    "en": Voice("piper", "en_US-joe-medium", "en"),
    "zh": Voice("espeak", "cmn", "zh"),
}
LAST_RESORT_VOICES = {
    "en": Voice("espeak", "en-us", "en"),
    "zh": Voice("espeak", "cmn", "zh"),
}
_WARM_UP_TEXT = {"en": "Hello.", "zh": "你好。"}
#: Sentences synthesising at once (piper runs two onnxruntime threads each, see its module).
TTS_WORKERS = 2
#: Finished sentences kept for sessions that say the same line (a few MB of 22 kHz audio).
CACHE_SENTENCES = 128


class TTSRegistry:
    """Engines by name, voices by avatar and language, synthesis with fallback.

    ``cache_size`` sentences are cached (0: none). ``close`` stops the TTS thread pool.
    """

    def __init__(self, settings: Settings, cache_size: int = CACHE_SENTENCES) -> None:
        self._settings = settings
        self._engines: dict[str, TTSEngine] = {}
        self._lock = threading.Lock()
        self._phonemizer = Phonemizer()
        self._pool = ThreadPoolExecutor(max_workers=TTS_WORKERS, thread_name_prefix="tts")
        self._cache_size = cache_size
        self._cache: OrderedDict[tuple[Voice, str], SpeechChunk] = OrderedDict()
        self._in_flight: dict[tuple[Voice, str], _InFlight] = {}
        self.cache_hits = 0
        self.syntheses = 0  # sentences synthesised (cache misses), fallbacks included

    def engine(self, name: str) -> TTSEngine:
        """The engine called ``name``, created on first use. Raises ``TTSError`` for an unknown
        name, or one whose package is missing (the message says what to install)."""
        with self._lock:
            engine = self._engines.get(name)
            if engine is None:
                engine = self._create(name)
                self._engines[name] = engine
            return engine

    def _create(self, name: str) -> TTSEngine:
        # Imported here so a missing optional package fails only the engine that needs it.
        if name == "piper":
            from avatar.speech.tts.piper import PiperTTS

            return PiperTTS(self._phonemizer, executor=self._pool)
        if name == "espeak":
            from avatar.speech.tts.espeak import EspeakTTS

            return EspeakTTS(executor=self._pool)
        if name == "edge":
            from avatar.speech.tts.edge import EdgeTTS

            return EdgeTTS(self._settings.edge_tts_url, self._phonemizer, executor=self._pool)
        raise TTSError(f"unknown TTS engine {name!r}; known engines: {', '.join(ENGINE_NAMES)}")

    def voice_for(self, avatar: str, lang: str) -> Voice:
        """The configured voice of ``avatar`` for ``lang`` ("en" or "zh")."""
        choice = self._settings.voice_for(avatar, lang)
        return Voice(choice.engine, choice.voice, lang)

    def offline_voice(self, lang: str) -> Voice:
        """The offline voice that stands in for any engine speaking ``lang``."""
        return OFFLINE_VOICES.get(lang, LAST_RESORT_VOICES["en"])

    async def synthesize(self, sentence: str, voice: Voice) -> SpeechChunk:
        """Speak ``sentence`` with ``voice``, falling back to offline engines (see module doc).

        Raises ``ValueError`` for an empty sentence, ``TTSError`` only when every engine failed.
        The chunk may be shared with other callers (see the module doc): do not modify it.
        """
        if not sentence.strip():
            raise ValueError("nothing to synthesise: the sentence is empty")
        key = (voice, sentence)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            self.cache_hits += 1
            return cached
        flight = self._in_flight.get(key)
        if flight is None:
            task = asyncio.create_task(self._synthesize(sentence, voice), name="tts.synthesize")
            flight = self._in_flight[key] = _InFlight(task)
        else:
            self.cache_hits += 1
        flight.waiters += 1
        try:
            chunk = await asyncio.shield(flight.task)
        finally:
            flight.waiters -= 1
            if flight.waiters == 0 and self._in_flight.get(key) is flight:
                del self._in_flight[key]
                if not flight.task.done():  # every caller gave up (interrupted): stop it
                    flight.task.cancel()
                    await asyncio.wait({flight.task})
        if self._cache_size > 0 and chunk.engine == voice.engine and key not in self._cache:
            chunk.audio.flags.writeable = False
            self._cache[key] = chunk
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return chunk

    def clear_cache(self) -> None:
        """Forget every cached sentence (sentences being synthesised are not affected)."""
        self._cache.clear()

    def close(self) -> None:
        """Stop the TTS thread pool (pending syntheses are cancelled)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _synthesize(self, sentence: str, voice: Voice) -> SpeechChunk:
        self.syntheses += 1
        candidates = _unique([voice, self.offline_voice(voice.lang), LAST_RESORT_VOICES.get(voice.lang)])
        offline = {self.offline_voice(voice.lang).engine, "espeak"}
        errors: list[str] = []
        for k, candidate in enumerate(candidates):
            # Offline engines get no time limit: a slow answer beats silence. Online ones do.
            timeout = None if candidate.engine in offline else self._settings.tts_fallback_timeout
            try:
                engine = self.engine(candidate.engine)
                return await asyncio.wait_for(engine.synthesize(sentence, candidate), timeout)
            except TimeoutError:
                reason = f"{candidate.engine} took longer than {timeout:g} s"
            except Exception as exc:  # whatever broke (TTSError, a bug, the network): fall back
                reason = f"{candidate.engine} failed: {exc}"
            errors.append(reason)
            if k + 1 < len(candidates):
                log.warning("TTS: %s; speaking with %s instead", reason, candidates[k + 1].engine)
        raise TTSError("no TTS engine could speak: " + "; ".join(errors))

    async def warm_up(self, voices: Iterable[Voice]) -> None:
        """Load the engines behind ``voices`` now (models, libraries) so the first reply is fast."""
        for voice in _unique(list(voices)):
            await self.engine(voice.engine).synthesize(_WARM_UP_TEXT.get(voice.lang, "Hello."), voice)


class _InFlight:
    """A sentence being synthesised, and how many callers await it."""

    __slots__ = ("task", "waiters")

    def __init__(self, task: asyncio.Task[SpeechChunk]) -> None:
        self.task = task
        self.waiters = 0


def _unique(voices: list[Voice | None]) -> list[Voice]:
    seen: list[Voice] = []
    for voice in voices:
        if voice is not None and voice not in seen:
            seen.append(voice)
    return seen
