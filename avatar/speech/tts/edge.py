"""Edge: Microsoft's online neural voices through the ``edge-tts`` package.

The service sends 24 kHz MP3 (decoded here with PyAV to int16 mono) and, with
``boundary="WordBoundary"``, each word's offset and duration in 100 ns ticks. It times
words, not phonemes: each word's phonemes come from espeak and are spread over the word's
time (``Phonemizer.phonemes_for_words``).

Needs the network; ``TTSRegistry`` falls back to an offline engine when it fails or is slow.
"""

from __future__ import annotations

import asyncio
import io
from concurrent.futures import Executor
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from avatar.speech.phonemize import Phonemizer
from avatar.speech.tts.base import TTSError, Voice
from avatar.timeline import SpeechChunk, Word

EDGE_SAMPLE_RATE = 24000
TICKS_PER_SECOND = 10_000_000
DEFAULT_VOICES = {"en": "en-US-EmmaMultilingualNeural", "zh": "zh-CN-XiaoxiaoNeural"}


@dataclass(frozen=True, slots=True)
class WordBoundary:
    text: str
    offset: int  # 100 ns ticks from the start of the audio
    duration: int


class EdgeTTS:
    """The ``"edge"`` engine. ``Voice.voice`` is an edge voice name ("zh-CN-YunxiNeural");
    ``None`` picks a default for ``Voice.lang``.

    ``url`` replaces the service's websocket endpoint (a proxy, or a local fake in tests);
    edge-tts appends ``&ConnectionId=...`` and its token parameters to it.
    """

    name = "edge"

    def __init__(
        self,
        url: str | None = None,
        phonemizer: Phonemizer | None = None,
        connect_timeout: int = 10,
        receive_timeout: int = 30,
        executor: Executor | None = None,
    ) -> None:
        self._executor = executor  # MP3 decoding; the TTS pool, or None: asyncio's default
        self._url = url if url is None or "?" in url else url + "?"
        self._phonemizer = phonemizer or Phonemizer()
        self._connect_timeout = connect_timeout
        self._receive_timeout = receive_timeout

    async def synthesize(self, sentence: str, voice: Voice) -> SpeechChunk:
        voice_name = voice.voice or DEFAULT_VOICES.get(voice.lang)
        if voice_name is None:
            raise TTSError(f"edge: no default voice for language {voice.lang!r}")
        mp3, boundaries = await self._fetch(sentence, voice_name)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._assemble, sentence, voice, mp3, boundaries)

    async def _fetch(self, sentence: str, voice_name: str) -> tuple[bytes, list[WordBoundary]]:
        edge_tts = _import_edge_tts()
        mp3 = bytearray()
        boundaries: list[WordBoundary] = []
        try:
            communicate = edge_tts.Communicate(
                sentence,
                voice_name,
                boundary="WordBoundary",
                connect_timeout=self._connect_timeout,
                receive_timeout=self._receive_timeout,
            )
            stream = communicate.stream()
            try:
                # edge-tts reads its endpoint from a module constant while it opens the
                # websocket, synchronously within the first step of the stream (before it
                # first waits), so setting it right before that step cannot leak into
                # another engine's request, even one running concurrently.
                edge_tts.communicate.WSS_URL = self._url or edge_tts.constants.WSS_URL
                async for message in stream:
                    if message["type"] == "audio":
                        mp3 += message["data"]
                    elif message["type"] == "WordBoundary":
                        boundaries.append(
                            WordBoundary(message["text"], int(message["offset"]), int(message["duration"]))
                        )
            finally:
                await stream.aclose()
        except TTSError:
            raise
        except Exception as exc:  # aiohttp, edge-tts and OS errors alike mean "no speech"
            raise TTSError(f"edge: {type(exc).__name__}: {exc}") from exc
        if not mp3:
            raise TTSError("edge: the service sent no audio")
        return bytes(mp3), boundaries

    def _assemble(
        self, sentence: str, voice: Voice, mp3: bytes, boundaries: list[WordBoundary]
    ) -> SpeechChunk:
        audio = decode_mp3(mp3, EDGE_SAMPLE_RATE)
        duration = len(audio) / EDGE_SAMPLE_RATE
        words = words_from_boundaries(boundaries, duration)
        phonemes = self._phonemizer.phonemes_for_words(words, duration)
        return SpeechChunk(
            text=sentence,
            audio=audio,
            sample_rate=EDGE_SAMPLE_RATE,
            phonemes=phonemes,
            words=words,
            lang=voice.lang,
            engine=self.name,
        )


def _import_edge_tts() -> ModuleType:
    try:
        import edge_tts
        import edge_tts.communicate
        import edge_tts.constants
    except ImportError as exc:
        raise TTSError("edge voices need edge-tts: pip install edge-tts") from exc
    if not hasattr(edge_tts.communicate, "WSS_URL"):  # the endpoint override relies on it
        raise TTSError("edge: this edge-tts version is not supported (no communicate.WSS_URL)")
    return edge_tts


def decode_mp3(data: bytes, sample_rate: int) -> np.ndarray:
    """MP3 bytes -> int16 mono at ``sample_rate`` (blocking). Raises ``TTSError`` if undecodable."""
    try:
        import av
    except ImportError as exc:
        raise TTSError("decoding edge audio needs PyAV: pip install av") from exc
    pieces: list[np.ndarray] = []
    try:
        with av.open(io.BytesIO(data), mode="r", format="mp3") as container:
            resampler = av.AudioResampler(format="s16", layout="mono", rate=sample_rate)
            for frame in container.decode(audio=0):
                for out in resampler.resample(frame):
                    pieces.append(_mono_int16(out))
            for out in resampler.resample(None):
                pieces.append(_mono_int16(out))
    except (av.error.FFmpegError, ValueError) as exc:
        raise TTSError(f"edge: undecodable audio: {exc}") from exc
    if not pieces:
        raise TTSError("edge: the audio holds no samples")
    return np.concatenate(pieces).astype(np.int16, copy=False)


def _mono_int16(frame: Any) -> np.ndarray:
    return np.asarray(frame.to_ndarray(), dtype=np.int16).reshape(-1)


def words_from_boundaries(boundaries: list[WordBoundary], duration: float) -> list[Word]:
    """Words in time order, clipped to ``[0, duration]``, none overlapping the one before."""
    words: list[Word] = []
    cursor = 0.0
    for boundary in sorted(boundaries, key=lambda b: b.offset):
        start = min(max(boundary.offset / TICKS_PER_SECOND, cursor), duration)
        end = min(max((boundary.offset + boundary.duration) / TICKS_PER_SECOND, start), duration)
        if boundary.text.strip():
            words.append(Word(boundary.text, start, end))
            cursor = end
    return words
