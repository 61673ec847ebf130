"""The TTS contract.

An engine synthesises ONE sentence at a time and returns a ``SpeechChunk`` whose phoneme
timeline covers the audio exactly. Streaming (sentence by sentence, so speech starts
before a long reply is synthesised) is built on top of this in one place for all engines.
Engines are loaded once per process and shared; they hold no per-conversation state.
Blocking engines must do their work off the event loop (``asyncio.to_thread``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from avatar.timeline import SpeechChunk


class TTSError(RuntimeError):
    """The engine could not synthesise (offline, bad voice, remote failure)."""


@dataclass(frozen=True, slots=True)
class Voice:
    """Which engine speaks, with which voice, in which language ("en" or "zh")."""

    engine: str
    voice: str | None = None
    lang: str = "en"


class TTSEngine(Protocol):
    name: str

    async def synthesize(self, sentence: str, voice: Voice) -> SpeechChunk:
        """Synthesise one sentence. Raises ``TTSError`` on failure."""
        ...
