"""The speech-recognition contract.

A recogniser turns one utterance of 16 kHz mono int16 audio into a ``Transcript``.
Recognisers are engines: loaded once per process, shared by every session, holding no
per-conversation state; blocking inference runs off the event loop inside the engine.

Partial transcripts (while the customer is still speaking) are plain ``transcribe`` calls
on the audio so far with ``partial=True``; an engine that cannot afford them says so with
``supports_partial = False``. ``PartialSchedule`` (one per stream) decides when a partial
is due, so the rate limit lives in one place for every engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from avatar.timeline import Word

SAMPLE_RATE = 16_000


class ASRError(RuntimeError):
    """Recognition failed (missing model, unreachable or failing endpoint, bad answer)."""


@dataclass(frozen=True, slots=True)
class Transcript:
    """What was said. ``lang`` is the language recognised (or assumed), ``None`` if unknown;
    ``duration`` is the audio's length in seconds; ``words`` carry times from the start of
    the audio when the engine provides them (empty otherwise)."""

    text: str
    lang: str | None
    duration: float
    words: tuple[Word, ...] = field(default=())
    partial: bool = False


class SpeechRecognizer(Protocol):
    name: str
    supports_partial: bool

    async def transcribe(
        self,
        audio16k: np.ndarray,
        lang: str | None = None,
        prompt: str | None = None,
        *,
        partial: bool = False,
    ) -> Transcript:
        """Recognise ``audio16k`` (int16, mono, 16 kHz).

        ``lang`` ("en", "zh", ...) or ``None`` to detect; ``prompt`` is vocabulary that
        biases recognition (see ``asr.prompt.domain_prompt``). ``partial=True`` marks a
        provisional transcription of an unfinished utterance: engines may serve finals
        first. Raises ``ASRError`` on failure.
        """
        ...

    async def aclose(self) -> None:
        """Release threads, connections and models; the engine is unusable afterwards."""
        ...


def check_audio(audio16k: np.ndarray) -> np.ndarray:
    """Validate utterance audio and return it as a flat int16 array.

    Raises ``ASRError`` for anything but 16-bit samples, so a caller passing 48 kHz float
    frames by mistake gets a clear message rather than a garbled transcript.
    """
    audio = np.asarray(audio16k)
    if audio.dtype != np.int16:
        raise ASRError(f"recognisers take int16 samples at 16 kHz, got {audio.dtype}")
    if audio.ndim != 1:
        audio = audio.reshape(-1)
    return audio


@dataclass(slots=True)
class PartialSchedule:
    """When to request the next partial transcript of an utterance in progress (per stream).

    The first partial is due once the utterance is ``min_audio`` long, later ones once
    ``interval`` seconds of new audio have arrived since the previous one (media time, not
    wall time), and never while one is still running. The caller marks
    ``started()``/``finished()`` around each call and ``reset()`` for a new utterance.
    """

    interval: float = 0.6
    min_audio: float = 0.5
    _last_audio: float | None = None
    _running: bool = False

    def due(self, audio_seconds: float) -> bool:
        """Whether to transcribe the utterance so far (``audio_seconds`` long) now."""
        if self._running or audio_seconds < self.min_audio:
            return False
        return self._last_audio is None or audio_seconds - self._last_audio >= self.interval

    def started(self, audio_seconds: float) -> None:
        self._running = True
        self._last_audio = audio_seconds

    def finished(self) -> None:
        self._running = False

    def reset(self) -> None:
        """A new utterance begins."""
        self._last_audio = None
        self._running = False
