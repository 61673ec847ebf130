"""Server-side echo guard: the avatar's own voice coming back through the customer's mic.

Browsers cancel most echo, but not all of it (speakers turned up, a laptop's AEC still
adapting, Bluetooth delays). Whatever leaks sounds like speech to the VAD and would make
the avatar interrupt itself, or answer its own words. ``EchoGuard`` is a double-talk
detector on energy envelopes:

1. The far end (what the avatar plays, pushed with its play-out clock times) and the near
   end (the customer's VAD windows) are reduced to energy per 8 ms bin on the shared clock.
2. Over the last few seconds it finds the echo path: the delay (0 to ``max_delay``) at
   which the near-end log envelope best correlates with the far-end one, and the echo gain
   at that delay (the median near/far energy ratio). A path correlating at least
   ``trust_correlation`` is trusted and kept for the session (the echo path hardly
   changes in a call); until then a provisional one is used, with a lower percentile of
   the ratio so that customer speech mixed in does not inflate it.
3. A near-end window is the customer's when, in at least half of its bins, its energy
   exceeds the predicted echo by ``margin_db``. The prediction is gain x the loudest
   far-end bin that can reach the near-end bin (one bin either side of the delay, and a
   reverberant tail decaying 60 dB over ``reverb_time``) plus the near-end noise floor.
   With no far-end sound within reach the window is the customer's outright; with ample
   far-end sound and no correlation at any delay there is no echo path to fear; in the
   first moments of the avatar's speech, before any estimate, the window is echo if any
   delay explains it.

Energy in dB relative to full scale. Pure numpy, about 0.1 ms per window; per session, time
passed in by the caller, never read from a clock.

Known limit: the customer must be louder than the leaked echo by about ``margin_db`` in
their voiced parts to be heard over it (at the same level they are taken for echo until the
avatar stops); measured on synthesised calls, a customer 10 dB above a -10 dB leak barges in
within 0.1 s of onset, one only 4 dB above it after about 0.7 s.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_EPS = 1e-12
_FULL_SCALE = 32768.0**2


@dataclass(frozen=True, slots=True)
class EchoConfig:
    """Echo-guard parameters; times in seconds, levels in dB."""

    bin_seconds: float = 0.008
    max_delay: float = 0.5
    history: float = 3.0
    margin_db: float = 8.0
    reverb_time: float = 0.3  # assumed RT60 of the echo's tail, seconds
    gain_percentile: float = 50.0  # of near/far energy ratios, for a trusted path
    provisional_percentile: float = 25.0  # the same while the path is uncertain
    far_active_db: float = -55.0  # far-end bins quieter than this are silence
    trust_correlation: float = 0.7  # an echo path this well correlated is kept for the session
    no_echo_correlation: float = 0.3  # below this (with ample evidence) no echo reaches the mic
    min_evidence: float = 0.25  # seconds of active far end behind any estimate
    customer_fraction: float = 0.5  # share of a window's bins that must beat the echo
    reestimate_every: int = 4  # windows between estimates once the path is trusted

    def __post_init__(self) -> None:
        if self.bin_seconds <= 0 or self.max_delay < 0 or self.history <= self.max_delay:
            raise ValueError("echo guard needs bin_seconds > 0 and history > max_delay >= 0")


@dataclass(frozen=True, slots=True)
class EchoVerdict:
    """Whether one near-end window is the customer (``customer``) or the avatar's echo.

    ``near_db`` is the window's level; ``echo_db`` the predicted echo level (``None`` when
    no far-end sound could reach it); ``delay``/``correlation`` the echo path used.
    """

    customer: bool
    near_db: float
    echo_db: float | None = None
    delay: float | None = None
    correlation: float | None = None


class _Envelope:
    """Energy (mean square / full scale) per fixed bin on the clock, over a bounded window."""

    def __init__(self, bin_seconds: float, span: float) -> None:
        self.bin = bin_seconds
        self.size = int(np.ceil(span / bin_seconds))
        self.base = 0  # absolute bin index of slot 0
        self.sums = np.zeros(self.size)
        self.counts = np.zeros(self.size)

    def add(self, samples: np.ndarray, rate: int, t: float) -> None:
        if samples.size == 0:
            return
        times = t + np.arange(samples.size) / rate
        bins = np.floor(times / self.bin + 1e-9).astype(np.int64)
        last = int(bins[-1])
        if last >= self.base + self.size:
            self._advance(last - self.size + 1)
        keep = bins >= self.base
        if not keep.any():
            return
        idx = bins[keep] - self.base
        lo = int(idx[0])
        power = samples[keep].astype(np.float64) ** 2 / _FULL_SCALE
        sums = np.bincount(idx - lo, weights=power)
        self.sums[lo : lo + sums.size] += sums
        self.counts[lo : lo + sums.size] += np.bincount(idx - lo)

    def _advance(self, new_base: int) -> None:
        shift = new_base - self.base
        if shift >= self.size:
            self.sums[:] = 0.0
            self.counts[:] = 0.0
        else:
            self.sums = np.concatenate([self.sums[shift:], np.zeros(shift)])
            self.counts = np.concatenate([self.counts[shift:], np.zeros(shift)])
        self.base = new_base

    def energy(self, first: int, last: int) -> tuple[np.ndarray, np.ndarray]:
        """Energies of absolute bins ``first..last`` inclusive, and which of them hold data."""
        n = last - first + 1
        out = np.zeros(n)
        have = np.zeros(n, dtype=bool)
        lo, hi = max(first, self.base), min(last, self.base + self.size - 1)
        if hi >= lo:
            s = slice(lo - self.base, hi - self.base + 1)
            counts = self.counts[s]
            filled = counts > 0
            np.divide(self.sums[s], counts, out=out[lo - first : hi - first + 1], where=filled)
            have[lo - first : hi - first + 1] = filled
        return out, have


def _db(energy: np.ndarray | float) -> np.ndarray:
    return 10.0 * np.log10(np.asarray(energy, dtype=np.float64) + _EPS)


def _masked_correlation(x: np.ndarray, rows: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Pearson correlation of ``x`` (n,) with each row of ``rows`` (m, n) over ``mask`` (m, n).

    Rows with fewer than two masked values or no variance get -1.
    """
    w = mask.astype(np.float64)
    count = np.maximum(w.sum(axis=1), 1.0)
    xs = w * x[None, :]
    mean_x = xs.sum(axis=1) / count
    mean_y = (w * rows).sum(axis=1) / count
    cov = (xs * rows).sum(axis=1) / count - mean_x * mean_y
    var_x = (xs * x[None, :]).sum(axis=1) / count - mean_x**2
    var_y = (w * rows * rows).sum(axis=1) / count - mean_y**2
    ok = (var_x > 1e-9) & (var_y > 1e-9) & (w.sum(axis=1) >= 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.where(ok, cov / np.sqrt(np.where(ok, var_x * var_y, 1.0)), -1.0)
    return corr


class EchoGuard:
    """Per-session echo guard (see the module docstring). Not thread-safe.

    ``push_far_end`` what the avatar plays, as it plays (clock time of its first sample);
    ``assess`` each near-end window of the customer's audio at 16 kHz.
    """

    def __init__(self, config: EchoConfig | None = None) -> None:
        self.config = cfg = config or EchoConfig()
        span = cfg.history + cfg.max_delay + 1.0
        self._far = _Envelope(cfg.bin_seconds, span)
        self._near = _Envelope(cfg.bin_seconds, span)
        self._lags = round(cfg.max_delay / cfg.bin_seconds)
        self._tail = max(1, round(cfg.reverb_time / cfg.bin_seconds))
        # Weights of far-end bins k - delay + 1 ... k - delay - tail for near-end bin k:
        # full one bin either side of the delay, then the reverberant tail, -60 dB at its end.
        decay = 10 ** (-6.0 * np.maximum(np.arange(-1, self._tail + 1), 0) / self._tail)
        self._reach_weights = decay[::-1].copy()
        self._windows = 0  # near-end windows assessed
        self._noise: float | None = None  # near-end noise floor (energy)
        self._far_active = float(10 ** (cfg.far_active_db / 10))
        # The session's trusted echo path: delay in bins, gain in dB, its correlation.
        self._path: tuple[int, float, float] | None = None

    @property
    def echo_path(self) -> tuple[float, float] | None:
        """The trusted echo path as (delay in seconds, gain in dB), once one is known."""
        if self._path is None:
            return None
        return self._path[0] * self.config.bin_seconds, self._path[1]

    def push_far_end(self, audio: np.ndarray, sample_rate: int, t: float) -> None:
        """Record the avatar's outgoing audio (int16, mono) whose first sample plays at ``t``."""
        self._far.add(np.asarray(audio).reshape(-1), sample_rate, t)

    def assess(self, audio16k: np.ndarray, start: float, sample_rate: int = 16_000) -> EchoVerdict:
        """Judge one near-end window (int16) starting at clock time ``start``."""
        cfg = self.config
        samples = np.asarray(audio16k).reshape(-1)
        self._near.add(samples, sample_rate, start)
        bin_ = cfg.bin_seconds
        first = int(np.floor(start / bin_ + 1e-9))
        last = int(np.floor((start + samples.size / sample_rate) / bin_ - 1e-9))
        near, _ = self._near.energy(first, last)
        near_db = float(_db(near.mean()))

        reach, _ = self._far.energy(first - self._lags - self._tail - 1, last)
        if not (reach > self._far_active).any():
            return EchoVerdict(True, near_db)  # no avatar sound could be echoing now

        # The path is re-estimated every window until trusted, then every ``reestimate_every``
        # windows: it drifts slowly, and the estimate is most of this guard's cost.
        self._windows += 1
        estimate = None
        if self._path is None or self._noise is None or self._windows % cfg.reestimate_every == 0:
            estimate = self._estimate(last)
        if self._path is not None:
            delay, gain_db, corr = self._path
        elif estimate is not None:
            delay, gain_db, corr = estimate
            if corr < cfg.no_echo_correlation:
                return EchoVerdict(True, near_db, None, delay * bin_, corr)  # no echo path shows
        else:
            # The avatar just started: evidence too thin to find the path. The window is
            # echo if any delay, with a provisional gain, explains it.
            return self._judge_unknown(first, last, near, near_db)
        predicted = self._predict(first, last, delay, gain_db)
        return self._verdict(near, predicted, near_db, delay, corr)

    # -- internals -------------------------------------------------------------------

    def _window(self, last: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """Near energies, their validity, and the far energies (with lag room) of the history."""
        bins = round(self.config.history / self.config.bin_seconds)
        first = last - bins + 1
        near, have = self._near.energy(first, last)
        far, _ = self._far.energy(first - self._lags - 1, last)
        return near, have, far, first

    def _lagged(self, far: np.ndarray, n: int) -> np.ndarray:
        """far lagged by 0..lags bins: row d is far(k - d) for the n history bins (a view)."""
        return np.lib.stride_tricks.sliding_window_view(far, n)[self._lags + 1 : 0 : -1]

    def _estimate(self, last: int) -> tuple[int, float, float] | None:
        """The best echo path over the history as (delay bins, gain dB, correlation).

        ``None`` until every candidate delay has ``min_evidence`` of active far end. A path
        correlating at least ``trust_correlation`` becomes the session's trusted path; an
        uncertain one carries the (lower) provisional gain.
        """
        cfg = self.config
        near, have, far, _ = self._window(last)
        heard = near[have]
        self._noise = float(np.percentile(heard, 10)) if heard.size else 0.0
        lagged = self._lagged(far, near.size)  # (lags + 1, n)
        active = (lagged > self._far_active) & have[None, :]
        if active.sum(axis=1).min() < cfg.min_evidence / cfg.bin_seconds:
            return None
        ln = _db(near)
        lf = _db(lagged)
        corr = _masked_correlation(ln, lf, active)
        d = int(np.argmax(corr))
        ratios = ln[active[d]] - lf[d][active[d]]
        best = float(corr[d])
        if best >= cfg.trust_correlation:
            self._path = (d, float(np.percentile(ratios, cfg.gain_percentile)), best)
            return self._path
        return d, float(np.percentile(ratios, cfg.provisional_percentile)), best

    def _predict(self, first: int, last: int, delay: int, gain_db: float) -> np.ndarray:
        """Predicted echo energy of near-end bins ``first..last`` through path (delay, gain).

        Each bin takes the loudest far-end bin that can reach it: one bin early or late
        (the two clocks' bins are not phase-aligned), or earlier by up to the reverb time,
        decaying 60 dB over it (a room keeps ringing after the avatar's syllable ends).
        """
        far, _ = self._far.energy(first - delay - self._tail, last - delay + 1)
        reach = np.lib.stride_tricks.sliding_window_view(far, self._tail + 2)  # row i: bins i..i+tail+1
        spread = (reach * self._reach_weights).max(axis=1)
        return spread * 10 ** (gain_db / 10) + (self._noise or 0.0)

    def _verdict(
        self, near: np.ndarray, predicted: np.ndarray, near_db: float, delay: int, corr: float | None
    ) -> EchoVerdict:
        cfg = self.config
        above = _db(near) > _db(predicted) + cfg.margin_db
        customer = bool(above.mean() >= cfg.customer_fraction)
        return EchoVerdict(customer, near_db, float(_db(predicted.mean())), delay * cfg.bin_seconds, corr)

    def _judge_unknown(self, first: int, last: int, near: np.ndarray, near_db: float) -> EchoVerdict:
        cfg = self.config
        hist_near, have, far, _ = self._window(last)
        lagged = self._lagged(far, hist_near.size)
        active = (lagged > self._far_active) & have[None, :]
        ln, lf = _db(hist_near), _db(lagged)
        for d in np.flatnonzero(active.any(axis=1)):
            gain_db = float(np.percentile(ln[active[d]] - lf[d][active[d]], cfg.provisional_percentile))
            verdict = self._verdict(near, self._predict(first, last, int(d), gain_db), near_db, int(d), None)
            if not verdict.customer:
                return verdict
        return EchoVerdict(True, near_db)  # no delay and gain explains it as echo
