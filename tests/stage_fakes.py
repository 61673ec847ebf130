"""Small fakes for stage-level unit tests (the real renderer and TTS have their own tests)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor, Future
from typing import Any

import numpy as np

from avatar.face_state import FaceState, MouthShape
from avatar.timeline import Phoneme, SpeechChunk, Word


class PlainRenderer:
    """Encodes the mouth opening into the frame so tests can read it back."""

    name = "plain"

    def __init__(self, width: int = 64, height: int = 64) -> None:
        self.width, self.height = width, height
        self.states: list[FaceState] = []

    def render(self, state: FaceState) -> np.ndarray:
        self.states.append(state)
        frame = np.zeros((self.height, self.width, 3), np.uint8)
        frame[:, :, 0] = round(state.mouth.open * 255)
        return frame

    def render_rgba(self, state: FaceState) -> np.ndarray:
        rgb = self.render(state)
        return np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])


class StillFace:
    def state_at(self, t: float, speaking: float = 0.0) -> FaceState:
        return FaceState()


class RampMouth:
    """Mouth opening = fraction of the segment played (easy to check)."""

    def __init__(self, duration: float) -> None:
        self.duration = duration

    def mouth_at(self, t: float) -> MouthShape:
        return MouthShape(open=min(1.0, max(0.0, t / self.duration)))


def tone_chunk(text: str = "hello there", seconds: float = 0.5, rate: int = 24_000) -> SpeechChunk:
    n = int(seconds * rate)
    t = np.arange(n) / rate
    audio = (8000 * np.sin(2 * np.pi * 220 * t)).astype(np.int16)
    words = text.split()
    step = seconds / len(words)
    return SpeechChunk(
        text=text,
        audio=audio,
        sample_rate=rate,
        phonemes=[Phoneme("a", 0.0, seconds)],
        words=[Word(w, i * step, (i + 1) * step) for i, w in enumerate(words)],
        lang="en",
    )


class ToneSource:
    """A speech source that 'synthesises' each sentence as a tone."""

    def __init__(self, seconds: float = 0.5) -> None:
        self.seconds = seconds
        self.requests: list[str] = []

    async def stream(self, text: str, lang: str | None) -> AsyncIterator[SpeechChunk]:
        for sentence in [s.strip() for s in text.split(".") if s.strip()]:
            self.requests.append(sentence)
            yield tone_chunk(sentence, self.seconds)


class InlineExecutor(Executor):
    """Runs submitted work at once on the calling thread, so fake-clock tests stay deterministic."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future
