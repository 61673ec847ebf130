"""Resampling inbound audio once, to the 16 kHz mono int16 that VAD and ASR take.

WebRTC delivers Opus decoded at 48 kHz, 20 ms per frame (960 samples per channel),
signed 16-bit, interleaved when stereo. ``StreamResampler`` converts frame by frame with a
polyphase FIR filter whose history is carried from one frame to the next, so frame edges
leave no clicks and the result equals resampling the whole recording at once.

Timing contract: the output is time-aligned with the input (the filter's group delay is
compensated), so output sample ``n`` of a stream lies at input time ``n / out_rate``
measured from the stream's first input sample. Output lags input by a few tenths of a
millisecond (half the filter length): a ``push`` returns every output sample whose filter
window is complete, and ``flush`` returns the rest at the end of the stream.
"""

from __future__ import annotations

from math import gcd

import numpy as np
from scipy.signal import firwin

VAD_RATE = 16_000

# Kaiser-windowed sinc, 10 zero crossings per side: the same design as
# scipy.signal.resample_poly, so the whole-buffer helper matches it closely.
_HALF_ZERO_CROSSINGS = 10
_KAISER_BETA = 5.0


def to_mono(pcm: np.ndarray, channels: int) -> np.ndarray:
    """Average interleaved ``channels`` of int16 ``pcm`` (any shape, flattened) to mono float64.

    Raises ``ValueError`` when the sample count is not a multiple of ``channels``.
    """
    flat = np.asarray(pcm).reshape(-1)
    if channels < 1:
        raise ValueError(f"channels must be at least 1, not {channels}")
    if flat.size % channels:
        raise ValueError(f"{flat.size} samples do not split into {channels} interleaved channels")
    if channels == 1:
        return flat.astype(np.float64)
    return flat.reshape(-1, channels).astype(np.float64).mean(axis=1)


def _to_int16(samples: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(samples), -32768, 32767).astype(np.int16)


class StreamResampler:
    """Streaming int16 resampler for ONE audio stream (per-stream state; not thread-safe).

    ``push(pcm, in_rate, channels)`` takes int16 samples (interleaved when ``channels > 1``;
    an ``av.AudioFrame.to_ndarray()`` array of shape ``(1, n * channels)`` is fine) and
    returns the mono int16 samples at ``out_rate`` that are ready. If ``in_rate`` changes
    mid-stream the remaining output of the old rate is flushed first and the filter restarts.
    """

    def __init__(self, out_rate: int = VAD_RATE) -> None:
        if out_rate <= 0:
            raise ValueError(f"out_rate must be positive, not {out_rate}")
        self.out_rate = out_rate
        self._in_rate: int | None = None
        self._up = 1
        self._down = 1
        self._delay = 0  # filter group delay, in upsampled samples
        self._phases = np.zeros((1, 1))  # polyphase filter bank: [phase, tap]
        self._taps = 1
        self._history = np.zeros(0)  # input samples still needed by future outputs
        self._history_start = 0  # input index of self._history[0]
        self._consumed = 0  # input samples received since the (re)start
        self._produced = 0  # output samples returned since the (re)start

    @property
    def in_rate(self) -> int | None:
        """The input rate of the current stream, or ``None`` before the first ``push``."""
        return self._in_rate

    def _configure(self, in_rate: int) -> None:
        g = gcd(in_rate, self.out_rate)
        self._up, self._down = self.out_rate // g, in_rate // g
        self._in_rate = in_rate
        if self._up == self._down:
            self._phases = np.ones((1, 1))
            self._taps, self._delay = 1, 0
        else:
            max_rate = max(self._up, self._down)
            half = _HALF_ZERO_CROSSINGS * max_rate
            h = firwin(2 * half + 1, 1.0 / max_rate, window=("kaiser", _KAISER_BETA)) * self._up
            self._taps = -(-len(h) // self._up)
            padded = np.zeros(self._taps * self._up)
            padded[: len(h)] = h
            # phases[p, j] = h[p + j * up]: the taps that meet real input samples for phase p.
            self._phases = padded.reshape(self._taps, self._up).T.copy()
            self._delay = half
        self._history = np.zeros(0)
        self._history_start = 0
        self._consumed = 0
        self._produced = 0

    def _emit(self, available: int) -> np.ndarray:
        """Compute every output whose newest input index is below ``available``."""
        # Output n reads input i0(n) = (n * down + delay) // up and the taps - 1 before it.
        last = (available * self._up - 1 - self._delay) // self._down  # largest n with i0(n) < available
        n = np.arange(self._produced, last + 1, dtype=np.int64)
        if n.size == 0:
            return np.zeros(0, dtype=np.int16)
        if self._up == 1:
            y = self._decimate(int(n[0]), int(n[-1]))
        else:
            y = self._polyphase(n)
        self._produced = int(n[-1]) + 1
        # Keep only the input the next output can still need.
        next_i0 = (self._produced * self._down + self._delay) // self._up
        keep_from = max(self._history_start, next_i0 - self._taps + 1)
        self._history = self._history[keep_from - self._history_start :]
        self._history_start = keep_from
        return _to_int16(y)

    def _decimate(self, first: int, last: int) -> np.ndarray:
        """Integer-ratio fast path (48 kHz -> 16 kHz): one FIR convolution, every down-th output."""
        lo = first * self._down + self._delay - self._taps + 1  # oldest input the outputs read
        hi = last * self._down + self._delay  # newest
        pad = max(0, self._history_start - lo)  # before the stream start: zeros
        segment = self._history[max(lo, self._history_start) - self._history_start : hi - self._history_start + 1]
        if pad:
            segment = np.concatenate([np.zeros(pad), segment])
        return np.convolve(segment, self._phases[0], mode="valid")[:: self._down]

    def _polyphase(self, n: np.ndarray) -> np.ndarray:
        pos = n * self._down + self._delay
        i0 = pos // self._up
        phase = pos % self._up
        idx = i0[:, None] - np.arange(self._taps)[None, :] - self._history_start
        # Indices before the stream start read zeros (as resample_poly pads).
        valid = idx >= 0
        window = np.where(valid, self._history[np.clip(idx, 0, None)], 0.0)
        result: np.ndarray = np.einsum("ij,ij->i", window, self._phases[phase])
        return result

    def push(self, pcm: np.ndarray, in_rate: int, channels: int = 1) -> np.ndarray:
        """Feed int16 ``pcm`` at ``in_rate``; return the mono int16 output now complete."""
        if in_rate <= 0:
            raise ValueError(f"in_rate must be positive, not {in_rate}")
        head = np.zeros(0, dtype=np.int16)
        if self._in_rate != in_rate:
            if self._in_rate is not None:
                head = self.flush()
            self._configure(in_rate)
        mono = to_mono(pcm, channels)
        self._history = np.concatenate([self._history, mono])
        self._consumed += mono.size
        out = self._emit(self._consumed)
        return np.concatenate([head, out]) if head.size else out

    def flush(self) -> np.ndarray:
        """End the stream: return the remaining output (zero-padded input) and reset.

        The total output of a stream is ``ceil(inputs * out_rate / in_rate)`` samples.
        """
        if self._in_rate is None:
            return np.zeros(0, dtype=np.int16)
        total = -(-self._consumed * self._up // self._down)
        remaining = total - self._produced
        out = np.zeros(0, dtype=np.int16)
        if remaining > 0:
            # Zero-pad until the last wanted output's filter window is complete.
            need = ((total - 1) * self._down + self._delay) // self._up + 1
            pad = max(0, need - self._consumed)
            self._history = np.concatenate([self._history, np.zeros(pad)])
            out = self._emit(self._consumed + pad)[:remaining]
        in_rate = self._in_rate
        self._configure(in_rate)
        return out


def resample(pcm: np.ndarray, in_rate: int, out_rate: int = VAD_RATE, channels: int = 1) -> np.ndarray:
    """Resample a whole int16 buffer (interleaved if ``channels > 1``) to mono int16 at ``out_rate``."""
    rs = StreamResampler(out_rate)
    head = rs.push(pcm, in_rate, channels)
    return np.concatenate([head, rs.flush()])
