"""The idle animation: what keeps an avatar alive between and under its words.

``IdleAnimator.state_at(t)`` is a pure function of the seed and the time: blinks at
random 2-6 s intervals (now and then a double blink), breathing, a slow head sway, small
gaze shifts and brow movement, with a little more head and brow motion while speaking.
Being a function of ``t`` rather than a simulation stepped frame by frame is what lets
frames be rendered out of order, in parallel, or again, and two stages with the same seed
move identically.

Random events (blinks, gaze targets) are drawn per fixed block of time from a generator
seeded with ``(seed, block)``, so any ``t`` costs one block's draw the first time and a
bisection after that; slow motions are sums of sines at incommensurate frequencies, so
they never visibly repeat.
"""

from __future__ import annotations

import bisect
import math
import threading
from dataclasses import dataclass

import numpy as np

from avatar.face_state import REST_MOUTH, FaceState

_BLOCK_S = 30.0  # random events are drawn per block of this length
_BLOCK_MARGIN_S = 1.0  # no blink this close to a block edge, so blinks never straddle blocks
_BLINK_GAP_S = (2.0, 6.0)
_DOUBLE_BLINK_P = 0.12
_DOUBLE_BLINK_GAP_S = (0.25, 0.4)
_BLINK_CLOSE_S = 0.06  # lids fall fast...
_BLINK_HOLD_S = 0.02
_BLINK_OPEN_S = 0.09  # ...and rise more slowly: about 150 ms in all
_GAZE_HOLD_S = (0.8, 3.5)
_GAZE_SHIFT_S = 0.06  # a saccade takes a few tens of milliseconds
_GAZE_RANGE = (0.25, 0.15)  # x, y
_BREATH_HZ = 0.25
_CACHE_BLOCKS = 64  # 32 minutes of event draws; a few KiB

# (amplitude in degrees, frequency in Hz): frequencies are pairwise incommensurate so the
# sum never repeats within any session; amplitudes add to a couple of degrees.
_YAW = ((1.2, 0.071), (0.7, 0.113), (0.35, 0.187))
_PITCH = ((0.8, 0.059), (0.45, 0.137), (0.2, 0.223))
_ROLL = ((0.6, 0.047), (0.3, 0.101))
# Extra motion while speaking: quicker nods and turns that accompany speech rhythm.
_SPEAK_YAW = ((0.8, 0.31), (0.4, 0.53))
_SPEAK_PITCH = ((0.9, 0.43), (0.45, 0.79))
_SPEAK_ROLL = ((0.35, 0.37),)


@dataclass(frozen=True, slots=True)
class _Block:
    blinks: tuple[float, ...]  # blink start times, sorted
    gaze_times: tuple[float, ...]  # times each gaze target starts, sorted; the first is the block start
    gaze: tuple[tuple[float, float], ...]  # gaze targets (x, y)


def _waves(t: float, waves: tuple[tuple[float, float], ...], phases: tuple[float, ...]) -> float:
    return sum(a * math.sin(2.0 * math.pi * f * t + p) for (a, f), p in zip(waves, phases, strict=True))


def _blink_closure(dt: float) -> float:
    """Lid closure ``dt`` seconds after a blink starts: 0 open .. 1 shut."""
    if dt < 0.0:
        return 0.0
    if dt < _BLINK_CLOSE_S:
        x = dt / _BLINK_CLOSE_S
        return x * x * (3.0 - 2.0 * x)
    dt -= _BLINK_CLOSE_S
    if dt < _BLINK_HOLD_S:
        return 1.0
    dt -= _BLINK_HOLD_S
    if dt < _BLINK_OPEN_S:
        x = 1.0 - dt / _BLINK_OPEN_S
        return x * x * (3.0 - 2.0 * x)
    return 0.0


BLINK_DURATION_S = _BLINK_CLOSE_S + _BLINK_HOLD_S + _BLINK_OPEN_S


def speaking_weight(t: float, start: float, end: float, ramp: float = 0.3) -> float:
    """How much speech motion to blend in at ``t`` for speech playing over ``[start, end)``.

    Rises from 0 to 1 over ``ramp`` seconds after ``start`` and falls back over ``ramp``
    seconds after ``end``, smoothly. Pass it as ``speaking`` to ``IdleAnimator.state_at``
    so the head does not jump when speech starts or stops (a plain bool switches the
    speech motion in at once). Stateless, like the animator.
    """
    if t < start or ramp <= 0.0:
        return 0.0 if t < start or t >= end else 1.0
    x = min((t - start) / ramp, 1.0)
    level = x * x * (3.0 - 2.0 * x)
    if t < end:
        return level
    # Fade from wherever the rise had got to when speech ended.
    y = min((end - start) / ramp, 1.0)
    at_end = y * y * (3.0 - 2.0 * y)
    z = max(1.0 - (t - end) / ramp, 0.0)
    return at_end * z * z * (3.0 - 2.0 * z)


class IdleAnimator:
    """Idle motion for one avatar on one stage. ``state_at`` is deterministic in ``(seed, t)``.

    Thread-safe; calls may come in any time order. The mouth is always at rest: lip-sync
    sets it with ``FaceState.with_mouth``.
    """

    def __init__(self, seed: int) -> None:
        if not isinstance(seed, int | np.integer):
            raise TypeError(f"IdleAnimator: seed must be an int, got {type(seed).__name__}")
        self.seed = int(seed)
        rng = np.random.default_rng([self.seed % 2**63, 0x1D1E])
        phases = rng.uniform(0.0, 2.0 * math.pi, 32).tolist()
        self._yaw_ph = tuple(phases[0:3])
        self._pitch_ph = tuple(phases[3:6])
        self._roll_ph = tuple(phases[6:8])
        self._s_yaw_ph = tuple(phases[8:10])
        self._s_pitch_ph = tuple(phases[10:12])
        self._s_roll_ph = tuple(phases[12:13])
        self._breath_ph = phases[13]
        self._brow_ph = tuple(phases[14:17])
        self._smile_ph = phases[17]
        self._drift_ph = tuple(phases[18:20])
        self._blocks: dict[int, _Block] = {}
        self._lock = threading.Lock()

    def _block(self, index: int) -> _Block:
        with self._lock:
            block = self._blocks.get(index)
        if block is not None:
            return block
        block = self._draw_block(index)
        with self._lock:
            if len(self._blocks) >= _CACHE_BLOCKS:
                self._blocks.pop(next(iter(self._blocks)))  # oldest inserted
            self._blocks[index] = block
        return block

    def _draw_block(self, index: int) -> _Block:
        rng = np.random.default_rng([self.seed % 2**63, index % 2**63, 0xB10C])
        start = index * _BLOCK_S
        end = start + _BLOCK_S - _BLOCK_MARGIN_S
        blinks: list[float] = []
        t = start + _BLOCK_MARGIN_S + float(rng.uniform(0.0, _BLINK_GAP_S[0]))
        while t < end:
            blinks.append(t)
            second = t + float(rng.uniform(*_DOUBLE_BLINK_GAP_S))
            if rng.random() < _DOUBLE_BLINK_P and second < end:
                blinks.append(second)
                t = second
            t += float(rng.uniform(*_BLINK_GAP_S))
        gaze_times = [start]
        gaze = [(0.0, 0.0)]
        t = start + float(rng.uniform(*_GAZE_HOLD_S))
        # Stop a second before the block end, so the last glance is complete before the
        # glance back to the camera that ends every block.
        while t < start + _BLOCK_S - 1.0:
            gaze_times.append(t)
            # Mostly near the camera, now and then a glance further away.
            spread = 1.0 if rng.random() < 0.25 else 0.4
            gaze.append(
                (
                    float(rng.uniform(-1.0, 1.0)) * _GAZE_RANGE[0] * spread,
                    float(rng.uniform(-1.0, 1.0)) * _GAZE_RANGE[1] * spread,
                )
            )
            t += float(rng.uniform(*_GAZE_HOLD_S))
        # Every block starts and ends looking at the camera, so gaze is continuous across blocks.
        gaze_times.append(start + _BLOCK_S - _GAZE_SHIFT_S)
        gaze.append((0.0, 0.0))
        return _Block(tuple(blinks), tuple(gaze_times), tuple(gaze))

    def blink_times(self, start: float, end: float) -> list[float]:
        """Start times of the blinks in ``[start, end)`` (for tests and tools)."""
        out: list[float] = []
        for index in range(math.floor(start / _BLOCK_S), math.floor(end / _BLOCK_S) + 1):
            out.extend(b for b in self._block(index).blinks if start <= b < end)
        return out

    def state_at(self, t: float, speaking: bool | float = False) -> FaceState:
        """The idle face at ``t`` seconds (any finite value, any order).

        ``speaking`` adds speech-rhythm head and brow motion; a float in 0..1 blends it
        in, so a caller can ramp it over a few hundred ms instead of switching with a jump.
        """
        if not math.isfinite(t):
            raise ValueError(f"IdleAnimator.state_at: t must be finite, got {t!r}")
        s = min(max(float(speaking), 0.0), 1.0)
        block = self._block(math.floor(t / _BLOCK_S))

        i = bisect.bisect_right(block.blinks, t) - 1
        close = 0.0
        if i >= 0:
            close = _blink_closure(t - block.blinks[i])
            if i >= 1:  # a double blink's first blink may still be opening
                close = max(close, _blink_closure(t - block.blinks[i - 1]))

        g = bisect.bisect_right(block.gaze_times, t) - 1
        gx, gy = block.gaze[g]
        if g >= 1:
            x = min((t - block.gaze_times[g]) / _GAZE_SHIFT_S, 1.0)
            x = x * x * (3.0 - 2.0 * x)
            px, py = block.gaze[g - 1]
            gx, gy = px + (gx - px) * x, py + (gy - py) * x
        drift = 0.02 * math.sin(2 * math.pi * 0.17 * t + self._drift_ph[0])
        gx += drift
        gy += 0.015 * math.sin(2 * math.pi * 0.13 * t + self._drift_ph[1])

        # Breathing: a slow phase wobble keeps the rhythm from looking metronomic.
        phase = (
            2.0 * math.pi * (_BREATH_HZ * t + 0.04 * math.sin(2.0 * math.pi * 0.021 * t)) + self._breath_ph
        )
        breath = 0.5 - 0.5 * math.cos(phase)

        yaw = _waves(t, _YAW, self._yaw_ph) + s * _waves(t, _SPEAK_YAW, self._s_yaw_ph)
        pitch = _waves(t, _PITCH, self._pitch_ph) + s * _waves(t, _SPEAK_PITCH, self._s_pitch_ph)
        roll = _waves(t, _ROLL, self._roll_ph) + s * _waves(t, _SPEAK_ROLL, self._s_roll_ph)
        # Brows drift a little; while speaking they lift on some stressed beats (positive lobes only).
        brow = 0.06 * math.sin(2 * math.pi * 0.053 * t + self._brow_ph[0]) + 0.03 * math.sin(
            2 * math.pi * 0.149 * t + self._brow_ph[1]
        )
        brow += s * 0.18 * max(math.sin(2 * math.pi * 0.41 * t + self._brow_ph[2]), 0.0) ** 2
        smile = 0.2 + 0.04 * math.sin(2 * math.pi * 0.031 * t + self._smile_ph)

        return FaceState(
            mouth=REST_MOUTH,
            eye_close_left=close,
            eye_close_right=close,
            brow=min(max(brow, -1.0), 1.0),
            smile=min(max(smile, 0.0), 1.0),
            head_yaw=yaw,
            head_pitch=pitch,
            head_roll=roll,
            breath=breath,
            gaze_x=min(max(gx, -1.0), 1.0),
            gaze_y=min(max(gy, -1.0), 1.0),
        )
