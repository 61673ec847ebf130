"""Build the configured speech recogniser from plain settings.

``ASRSettings`` is what ``avatar.config.Settings`` carries for recognition (its fields map
to ``asr_*`` settings); ``build_recognizer`` turns it into one engine for the process.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from avatar.speech.asr.base import ASRError, SpeechRecognizer

ENGINES = ("whisper", "openai")


@dataclass(frozen=True, slots=True)
class ASRSettings:
    """Which recogniser to run and how.

    ``engine``: ``"whisper"`` (local faster-whisper) or ``"openai"`` (an OpenAI-compatible
    ``/v1/audio/transcriptions`` endpoint).
    whisper: ``model_dir`` is a CTranslate2 Whisper model directory, ``None`` for the
    embedded tiny.en (English only); ``cpu_threads``, ``compute_type``, ``beam_size``,
    ``window`` (seconds of audio the encoder sees; 30 is Whisper's own, shorter is faster).
    openai: ``url`` (API base or full endpoint URL), ``model``, ``api_key``, ``timeout`` (s).
    """

    engine: str = "whisper"
    model_dir: Path | None = None
    cpu_threads: int = 2
    compute_type: str = "int8"
    beam_size: int = 1
    window: float = 10.0
    url: str | None = None
    model: str = "whisper-1"
    api_key: str | None = None
    timeout: float = 10.0


def build_recognizer(settings: ASRSettings) -> SpeechRecognizer:
    """The recogniser ``settings`` describe, loaded and ready.

    Loading a local model blocks for about half a second: call this at start-up (off the
    event loop if one is running). Raises ``ASRError`` with a message naming the setting
    at fault: unknown engine, missing model directory, missing endpoint URL.
    """
    engine = settings.engine.strip().lower()
    if engine == "whisper":
        from avatar.speech.asr.whisper import WhisperASR

        if settings.cpu_threads < 1:
            raise ASRError(f"asr cpu_threads must be at least 1, not {settings.cpu_threads}")
        if settings.beam_size < 1:
            raise ASRError(f"asr beam_size must be at least 1, not {settings.beam_size}")
        return WhisperASR(
            settings.model_dir,
            cpu_threads=settings.cpu_threads,
            compute_type=settings.compute_type,
            beam_size=settings.beam_size,
            window=settings.window,
        )
    if engine == "openai":
        from avatar.speech.asr.openai import OpenAIASR

        if not settings.url:
            raise ASRError("asr engine 'openai' needs a url (e.g. http://localhost:8000/v1)")
        return OpenAIASR(settings.url, settings.model, settings.api_key, settings.timeout)
    raise ASRError(f"unknown asr engine {settings.engine!r}: choose one of {', '.join(ENGINES)}")
