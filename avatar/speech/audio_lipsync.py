"""Lip-sync from the sound alone, for speech that comes with no phoneme timeline.

Pre-recorded audio and an operator's live voice have no phonemes, so the mouth is driven
by what can be heard in each 32 ms frame:

* loudness (RMS in dB, above a noise floor that adapts to the recording) opens the jaw,
  smoothed with a fast attack and a slower release the way lips move;
* the first formant F1 (and, as a fallback, the balance of 500-1200 Hz against 80-500 Hz)
  scales that opening: "ah" opens wider than "ee" or "oo" at the same loudness;
* the second formant F2, relative to the speaker's own median, spreads the lips for front
  vowels ("ee", "eh") and narrows and rounds them for back vowels ("oh", "aw");
* energy above 4 kHz marks sibilants ("s", "sh", "f"): teeth show, the jaw nearly closes;
* frames below the speech gate are silence: every parameter relaxes to rest.

Formants come from selective linear prediction (Makhoul 1975): a 10-pole LPC fitted to
the frame's 0-5 kHz power spectrum, all frames at once, the poles being the eigenvalues
of the predictors' companion matrices.

``track_from_audio`` analyses a whole recording (its noise floor, speech level and median
F2 come from the recording itself). ``AudioMouthFollower`` does the same frame by frame
for live audio, tracking them as it goes. Both sample frames at ``i / rate`` seconds
(window centred there), so their results line up with ``MouthTrack``.

Known limits: lips that close without a drop in loudness (a voiced "m" or "b" inside a
word) are not seen, and rounding is inferred from a low F2, so the fronted "oo" of
American English ("you", "two") reads as neutral.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np

from avatar.face_state import REST_MOUTH, MouthShape
from avatar.speech.lipsync import N_PARAMS, MouthTrack, _sample_count

_WINDOW_S = 0.032
_ATTACK_S = 0.015  # jaw opening follows an onset within about a frame
_RELEASE_S = 0.05  # and closes a little more slowly, as jaws do
_SHAPE_TAU_S = 0.04  # lip spreading/rounding changes more slowly than the jaw
_ACTIVITY_TAU_S = 0.06
_MAX_OPEN = 0.9
_GATE_ABOVE_FLOOR_DB = 8.0  # a frame this far above the noise floor may be speech
_SPEECH_RANGE_DB = 30.0  # the gate never sits further below the speech level than this
_ABSOLUTE_GATE_DB = -65.0  # quieter than this is silence whatever the recording
_MIN_SPAN_DB = 12.0  # gate-to-speech-level span used when a recording is nearly flat
_LPC_ORDER = 10
_LPC_MAX_HZ = 5000.0
_PRE_EMPHASIS = 0.94
_F2_OCTAVES = 0.35  # F2 this far (in octaves) above/below the speaker's median is fully front/back
_DEFAULT_F2_HZ = 1600.0  # a speaker's median F2 before any is measured
# Feature columns.
_LEVEL, _F1_RATIO, _HF_RATIO, _F1, _F2 = range(5)


@dataclass(frozen=True, slots=True)
class _Bands:
    """What the analysis of one sample rate needs: window, FFT size, band masks."""

    nfft: int
    win: int
    window: np.ndarray
    matrix: np.ndarray  # (bins, 4): 80-500, 500-1200, 80-4000, 4000-11000 Hz
    lpc_bins: int  # bins 0..lpc_bins-1 cover 0.._LPC_MAX_HZ
    lpc_rate: float  # the sample rate the truncated spectrum stands for
    pre_emphasis: np.ndarray  # |1 - a e^-jw|^2 per bin


def _bands(sample_rate: int) -> _Bands:
    win = max(round(_WINDOW_S * sample_rate), 16)
    nfft = 1 << (win - 1).bit_length()
    freqs = np.fft.rfftfreq(nfft, 1.0 / sample_rate)
    edges = ((80, 500), (500, 1200), (80, 4000), (4000, 11000))
    matrix = np.stack([((freqs >= lo) & (freqs < hi)).astype(np.float64) for lo, hi in edges], axis=1)
    kmax = min(int(np.searchsorted(freqs, min(_LPC_MAX_HZ, sample_rate / 2))), len(freqs) - 1)
    omega = 2.0 * np.pi * freqs[: kmax + 1] / sample_rate
    emphasis = 1.0 + _PRE_EMPHASIS**2 - 2.0 * _PRE_EMPHASIS * np.cos(omega)
    return _Bands(nfft, win, np.hanning(win), matrix, kmax + 1, 2.0 * float(freqs[kmax]), emphasis)


def _formants(power: np.ndarray, bands: _Bands) -> tuple[np.ndarray, np.ndarray]:
    """F1 and F2 (Hz, NaN where not found) of each row of a 0-5 kHz power spectrum."""
    spec = power * bands.pre_emphasis
    r = np.fft.irfft(spec, axis=1)[:, : _LPC_ORDER + 1]
    r[:, 0] = r[:, 0] * (1.0 + 1e-6) + 1e-15  # a little white noise keeps silent frames stable
    n = len(r)
    a = np.zeros((n, _LPC_ORDER + 1))
    a[:, 0] = 1.0
    err = r[:, 0].copy()
    for i in range(1, _LPC_ORDER + 1):  # Levinson-Durbin, every frame at once
        acc = r[:, i] + np.einsum("nj,nj->n", a[:, 1:i], r[:, i - 1 : 0 : -1])
        k = -acc / err
        a[:, 1:i] = a[:, 1:i] + k[:, None] * a[:, i - 1 : 0 : -1]
        a[:, i] = k
        err = err * (1.0 - k * k)
    companion = np.zeros((n, _LPC_ORDER, _LPC_ORDER))
    companion[:, 0, :] = -a[:, 1:]
    companion[:, np.arange(1, _LPC_ORDER), np.arange(_LPC_ORDER - 1)] = 1.0
    roots = np.linalg.eigvals(companion)
    freq = np.angle(roots) * bands.lpc_rate / (2.0 * np.pi)
    bandwidth = -np.log(np.maximum(np.abs(roots), 1e-9)) * bands.lpc_rate / np.pi
    # Formants are sharp resonances above the voice's fundamental.
    freq = np.where((freq > 150.0) & (bandwidth < 500.0), freq, np.inf)
    freq.sort(axis=1)
    f1, f2 = freq[:, 0], freq[:, 1]
    return np.where(np.isfinite(f1), f1, np.nan), np.where(np.isfinite(f2), f2, np.nan)


def _features(frames: np.ndarray, bands: _Bands) -> np.ndarray:
    """Per frame (rows of ``frames``, float64 in [-1, 1]): level dB, 500-1200/80-500 Hz ratio
    dB, 4-11/0.08-4 kHz ratio dB, F1 Hz, F2 Hz (NaN where not found), as a ``(k, 5)`` array."""
    level = 10.0 * np.log10(np.mean(frames * frames, axis=1) + 1e-12)
    power = np.abs(np.fft.rfft(frames * bands.window, n=bands.nfft, axis=1)) ** 2
    e = power @ bands.matrix + 1e-12
    f1_ratio = 10.0 * np.log10(e[:, 1] / e[:, 0])
    hf_ratio = 10.0 * np.log10(e[:, 3] / e[:, 2])
    f1 = np.full(len(frames), np.nan)
    f2 = np.full(len(frames), np.nan)
    audible = level > _ABSOLUTE_GATE_DB  # formants of silence are not worth their cost
    if np.any(audible):
        f1[audible], f2[audible] = _formants(power[audible, : bands.lpc_bins], bands)
    return np.stack([level, f1_ratio, hf_ratio, f1, f2], axis=1)


def _targets(feat: np.ndarray, gate_db: np.ndarray, speech_db: np.ndarray, f2_ref: np.ndarray) -> np.ndarray:
    """Unsmoothed mouth targets per frame, ``(k, 8)``: the 7 mouth parameters and the
    speech activity (0/1) that the smoother uses to fade them to rest."""
    level, f1_ratio, hf_ratio = feat[:, _LEVEL], feat[:, _F1_RATIO], feat[:, _HF_RATIO]
    span = np.maximum(speech_db - gate_db, _MIN_SPAN_DB)
    loud = np.clip((level - gate_db) / span, 0.0, 1.0)
    active = level > gate_db
    sibilance = np.clip((hf_ratio + 15.0) / 15.0, 0.0, 1.0)
    # Formants only mean something in voiced, vowel-like frames.
    voiced = active & (sibilance < 0.5) & np.isfinite(feat[:, _F1]) & np.isfinite(feat[:, _F2])
    # Openness: F1 from about 280 Hz ("ee", "oo") to 650 Hz ("ah"); the band ratio, about
    # -20 dB for close and +5 dB for open vowels (measured on Piper's voice), backs it up.
    by_ratio = np.clip((f1_ratio + 20.0) / 25.0, 0.0, 1.0)
    by_f1 = np.clip((np.nan_to_num(feat[:, _F1], nan=0.0) - 280.0) / 370.0, 0.0, 1.0)
    openness = np.where(voiced, 0.5 * (by_ratio + by_f1), by_ratio)
    # loud**0.75: between the ear's log scale (all dB alike) and plain amplitude.
    jaw = _MAX_OPEN * loud**0.75 * (0.55 + 0.45 * openness) * (1.0 - 0.65 * sibilance)
    f2 = np.nan_to_num(feat[:, _F2], nan=1.0)
    front = np.where(voiced, np.tanh(np.log2(np.maximum(f2, 1.0) / f2_ref) / _F2_OCTAVES), 0.0)
    back = np.clip(-front, 0.0, 1.0)
    out = np.zeros((len(feat), N_PARAMS + 1))
    out[:, 0] = jaw
    # An open jaw ("ah", F2 also lowish) holds back the narrowing a low F2 would otherwise mean.
    out[:, 1] = 0.6 * np.clip(front, 0.0, 1.0) - 0.7 * back * (1.0 - 0.8 * openness)
    out[:, 2] = 0.9 * back * (1.0 - 0.7 * openness)
    out[:, 6] = 0.35 * loud * (1.0 - back) + 0.65 * sibilance
    out[:, 7] = active
    return out


def _median_f2(feat: np.ndarray, gate_db: float) -> float:
    """The speaker's median F2 over voiced frames: the reference for front and back."""
    sibilance = np.clip((feat[:, _HF_RATIO] + 15.0) / 15.0, 0.0, 1.0)
    voiced = (feat[:, _LEVEL] > gate_db) & (sibilance < 0.5) & np.isfinite(feat[:, _F2])
    return float(np.median(feat[voiced, _F2])) if np.count_nonzero(voiced) >= 5 else _DEFAULT_F2_HZ


class _Smoother:
    """Attack/release smoothing of the jaw, plain one-pole smoothing of the lips, and a
    speech-activity envelope that fades everything to rest in silence."""

    __slots__ = ("_a_activity", "_a_attack", "_a_release", "_a_shape", "_state")

    def __init__(self, rate: float) -> None:
        step = 1.0 / rate
        self._a_attack = 1.0 - math.exp(-step / _ATTACK_S)
        self._a_release = 1.0 - math.exp(-step / _RELEASE_S)
        self._a_shape = 1.0 - math.exp(-step / _SHAPE_TAU_S)
        self._a_activity = 1.0 - math.exp(-step / _ACTIVITY_TAU_S)
        self._state = [0.0] * (N_PARAMS + 1)

    def run(self, targets: np.ndarray) -> np.ndarray:
        out = np.empty((len(targets), N_PARAMS), dtype=np.float32)
        s = self._state
        a_att, a_rel, a_shape, a_act = self._a_attack, self._a_release, self._a_shape, self._a_activity
        for k, row in enumerate(targets.tolist()):
            jaw = row[0]
            s[0] += (jaw - s[0]) * (a_att if jaw > s[0] else a_rel)
            for p in (1, 2, 6):
                s[p] += (row[p] - s[p]) * a_shape
            s[7] += (row[7] - s[7]) * a_act
            act = s[7]
            out[k] = (s[0], s[1] * act, s[2] * act, 0.0, 0.0, 0.0, s[6] * act)
        return out


def _as_float_mono(audio: np.ndarray) -> np.ndarray:
    arr = np.asarray(audio)
    if arr.ndim == 2:
        arr = arr.mean(axis=1) if arr.dtype.kind == "f" else arr.astype(np.float64).mean(axis=1)
    elif arr.ndim != 1:
        raise ValueError(f"audio must be mono (n,) or interleaved (n, channels), got shape {arr.shape}")
    if arr.dtype.kind == "i":
        scale = float(np.iinfo(np.int16 if arr.dtype == np.int16 else arr.dtype).max) + 1.0
        return arr.astype(np.float64) / scale
    if arr.dtype.kind == "u":
        info = np.iinfo(arr.dtype)
        return (arr.astype(np.float64) - (info.max + 1) / 2) / ((info.max + 1) / 2)
    if arr.dtype.kind == "f":
        return arr.astype(np.float64)
    raise ValueError(f"audio must be integer PCM or float samples, got dtype {arr.dtype}")


def _check_rate(sample_rate: int) -> None:
    if not isinstance(sample_rate, int | np.integer) or sample_rate < 4000:
        raise ValueError(f"sample_rate must be an integer number of Hz >= 4000, got {sample_rate!r}")


def _frames(audio: np.ndarray, centres: np.ndarray, win: int) -> np.ndarray:
    """Rows of ``win`` samples centred on ``centres`` (sample indices), zero outside ``audio``."""
    half = win // 2
    padded = np.concatenate([np.zeros(half), audio, np.zeros(win)])
    idx = centres[:, None] + np.arange(win)[None, :]
    return padded[idx]


def track_from_audio(audio: np.ndarray, sample_rate: int, rate: float = 100.0) -> MouthTrack:
    """The mouth track of a recording, from its sound alone.

    ``audio``: mono samples, int16 (or any integer PCM) or float in [-1, 1]; a 2-D
    ``(n, channels)`` array is mixed down. The track has ``duration = len(audio) /
    sample_rate`` and is at rest over silence, at the start and at the end.
    """
    _check_rate(sample_rate)
    x = _as_float_mono(audio)
    duration = len(x) / float(sample_rate)
    n = _sample_count(duration, rate)
    if len(x) == 0 or not np.any(x):
        return MouthTrack.rest(duration, rate)
    bands = _bands(sample_rate)
    centres = np.round(np.arange(n) / rate * sample_rate).astype(np.int64)
    feat = _features(_frames(x, centres, bands.win), bands)
    level = feat[:, 0]
    # The recording's own level distribution: quiet frames give the floor, loud ones the
    # speech level. Percentiles, so clicks and breaths do not move them.
    floor_db = float(np.percentile(level, 10))
    speech_db = float(np.percentile(level, 95))
    gate = max(floor_db + _GATE_ABOVE_FLOOR_DB, speech_db - _SPEECH_RANGE_DB, _ABSOLUTE_GATE_DB)
    f2_ref = _median_f2(feat, gate)
    ones = np.ones(n)
    targets = _targets(feat, gate * ones, speech_db * ones, f2_ref * ones)
    params = _Smoother(rate).run(targets)
    # Rest exactly at the edges: from the last sample at or before ``duration`` on.
    params[0] = 0.0
    params[math.floor(duration * rate + 1e-9) :] = 0.0
    return MouthTrack(params, rate, duration)


class AudioMouthFollower:
    """Live lip-sync from a stream of audio (an operator's microphone), one per stage.

    ``push`` the audio as it arrives; ``mouth_at(t)`` gives the mouth for audio time ``t``,
    seconds since the first sample pushed (or since ``reset``), so a stage that plays the
    voice back from a jitter buffer looks the mouth up at the playback position, like any
    other audio. ``latest()`` is the newest mouth, for callers with no audio clock.

    Each frame's window is centred on its time stamp, so a frame is known
    ``_WINDOW_S / 2`` (16 ms) after its time stamp; asking for a later time gives the newest
    frame. About ``history`` seconds of frames are kept; older times give the oldest.
    Thread-safe: ``push`` may run on the event loop while a renderer thread reads.
    """

    def __init__(self, rate: float = 100.0, history: float = 2.0) -> None:
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"rate must be a positive number of Hz, got {rate!r}")
        if not (history > 0 and math.isfinite(history)):
            raise ValueError(f"history must be a positive number of seconds, got {history!r}")
        self.rate = float(rate)
        self._cap = max(math.ceil(history * rate), 2)
        self._lock = threading.Lock()
        self._params = np.zeros((self._cap, N_PARAMS), dtype=np.float32)
        self._sample_rate = 0
        self._bands: _Bands | None = None
        self._reset_locked()

    def _reset_locked(self) -> None:
        self._smoother = _Smoother(self.rate)
        self._buffer = np.zeros(0)
        self._buffer_start = 0  # absolute sample index of _buffer[0], at the current sample rate
        self._samples = 0  # samples pushed at the current sample rate
        self._time_base = 0.0  # audio time at which the current sample rate began
        self._frame_base = 0  # first frame index belonging to the current sample rate
        self._frames_done = 0  # frames computed so far (all sample rates)
        self._floor_db = -70.0
        self._speech_db = -70.0 + _SPEECH_RANGE_DB / 2
        self._f2_ref = _DEFAULT_F2_HZ

    def reset(self) -> None:
        """Forget everything: the next ``push`` starts audio time 0 again (a new utterance source)."""
        with self._lock:
            self._reset_locked()

    @property
    def time(self) -> float:
        """Audio time (s) of all samples pushed so far."""
        with self._lock:
            return self._time_base + (self._samples / self._sample_rate if self._sample_rate else 0.0)

    def push(self, samples: np.ndarray, sample_rate: int) -> None:
        """Append audio (mono, int16 or float in [-1, 1]) and analyse every frame it completes.

        A change of ``sample_rate`` mid-stream is allowed: audio time carries on, the
        analysis restarts at the new rate.
        """
        _check_rate(sample_rate)
        x = _as_float_mono(samples)
        with self._lock:
            if sample_rate != self._sample_rate:
                if self._sample_rate:
                    self._time_base += self._samples / self._sample_rate
                self._sample_rate = int(sample_rate)
                self._bands = _bands(self._sample_rate)
                self._buffer = np.zeros(0)
                self._buffer_start = 0
                self._samples = 0
                self._frame_base = self._frames_done
            if len(x) == 0:
                return
            self._buffer = np.concatenate([self._buffer, x])
            self._samples += len(x)
            self._analyse_locked()

    def _analyse_locked(self) -> None:
        bands = self._bands
        assert bands is not None
        sr = self._sample_rate
        half = bands.win // 2
        # Frame k (absolute) is centred on audio time k / rate; it is complete once the
        # samples up to its centre + half a window have arrived.
        first = self._frames_done
        offset_s = self._time_base
        last_time = offset_s + (self._samples - (bands.win - half)) / sr
        last = math.floor(last_time * self.rate + 1e-9)
        if last < first:
            return
        ks = np.arange(first, last + 1)
        centres = np.round((ks / self.rate - offset_s) * sr).astype(np.int64) - self._buffer_start
        padded_left = max(half - int(centres.min()), 0)
        buf = np.concatenate([np.zeros(padded_left), self._buffer, np.zeros(bands.win)])
        idx = (centres + padded_left - half)[:, None] + np.arange(bands.win)[None, :]
        feat = _features(buf[idx], bands)
        gates = np.empty(len(ks))
        speech = np.empty(len(ks))
        refs = np.empty(len(ks))
        step = 1.0 / self.rate
        for j, (level, _f1_ratio, hf_ratio, _f1, f2) in enumerate(feat.tolist()):
            # Noise floor: follows dips at once, creeps up 3 dB/s so a louder room is learnt.
            self._floor_db = level if level < self._floor_db else self._floor_db + 3.0 * step
            # Speech level: jumps to loud frames, decays toward the floor over ~4 s.
            if level > self._speech_db:
                self._speech_db = level
            else:
                self._speech_db += (self._floor_db + _MIN_SPAN_DB - self._speech_db) * (step / 4.0)
            gate = max(
                self._floor_db + _GATE_ABOVE_FLOOR_DB, self._speech_db - _SPEECH_RANGE_DB, _ABSOLUTE_GATE_DB
            )
            if level > gate and hf_ratio < -7.5 and math.isfinite(f2):
                # The speaker's typical F2, on a log scale, over the last few seconds.
                self._f2_ref *= (f2 / self._f2_ref) ** (step / 3.0)
            gates[j], speech[j], refs[j] = gate, self._speech_db, self._f2_ref
        params = self._smoother.run(_targets(feat, gates, speech, refs))
        slots = ks % self._cap
        self._params[slots] = params
        self._frames_done = int(last) + 1
        # Keep only what the next frames' windows still need.
        next_centre = round((self._frames_done / self.rate - offset_s) * sr)
        keep_from = max(next_centre - half - self._buffer_start, 0)
        if keep_from > 0:
            self._buffer = self._buffer[keep_from:]
            self._buffer_start += keep_from

    def mouth_at(self, t: float) -> MouthShape:
        """The mouth for audio time ``t`` (seconds), interpolated between frames; the newest
        frame for later times, the oldest kept one for earlier times, rest before any audio."""
        with self._lock:
            done = self._frames_done
            if done == 0:
                return REST_MOUTH
            oldest = max(done - self._cap, 0)
            x = (
                min(max(t * self.rate, float(oldest)), float(done - 1))
                if math.isfinite(t)
                else float(done - 1)
            )
            i = int(x)
            frac = x - i
            a = self._params[i % self._cap].tolist()
            if frac == 0.0 or i + 1 >= done:
                return MouthShape(*a)
            b = self._params[(i + 1) % self._cap].tolist()
        return MouthShape(*(p + (q - p) * frac for p, q in zip(a, b, strict=True)))

    def latest(self) -> MouthShape:
        """The newest analysed mouth (rest before any audio)."""
        with self._lock:
            done = self._frames_done
            if done == 0:
                return REST_MOUTH
            return MouthShape(*self._params[(done - 1) % self._cap].tolist())
