"""The idle animation: deterministic, bounded, alive."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from avatar.face_state import REST_MOUTH, FaceState
from avatar.idle import BLINK_DURATION_S, IdleAnimator, speaking_weight

RATE = 100.0


def sample(anim: IdleAnimator, start: float, seconds: float, speaking: float = 0.0) -> list[FaceState]:
    return [anim.state_at(start + k / RATE, speaking) for k in range(int(seconds * RATE))]


def blink_onsets(states: list[FaceState]) -> int:
    closed = [s.eye_close_left > 0.5 for s in states]
    return sum(1 for a, b in itertools.pairwise(closed) if b and not a)


def test_same_seed_same_motion_in_any_order() -> None:
    rng = np.random.default_rng(7)
    times = rng.uniform(-100.0, 500.0, 400).tolist()
    first = IdleAnimator(seed=42)
    forward = [first.state_at(t) for t in sorted(times)]
    second = IdleAnimator(seed=42)
    shuffled = {t: second.state_at(t) for t in times}  # random order, crossing many blocks
    assert forward == [shuffled[t] for t in sorted(times)]
    # Asking again (from the cache) gives the same answer.
    assert [first.state_at(t) for t in sorted(times)] == forward


def test_different_seeds_move_differently() -> None:
    a = sample(IdleAnimator(1), 0.0, 20.0)
    b = sample(IdleAnimator(2), 0.0, 20.0)
    assert sum(1 for x, y in zip(a, b, strict=True) if x != y) > 0.9 * len(a)
    assert IdleAnimator(1).blink_times(0, 60) != IdleAnimator(2).blink_times(0, 60)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 12345, -7])
def test_blink_rate_and_shape(seed: int) -> None:
    anim = IdleAnimator(seed)
    states = sample(anim, 0.0, 60.0)
    blinks = blink_onsets(states)
    # 2-6 s apart, with the odd double blink: 10 to 30 blinks a minute, a few more with doubles.
    assert 9 <= blinks <= 36, blinks
    starts = anim.blink_times(0.0, 60.0)
    assert len(starts) == blinks
    gaps = np.diff(starts)
    assert gaps.min() >= 0.25  # a double blink's second blink follows the first closely
    singles = gaps[gaps > 1.0]
    assert singles.min() >= 2.0 and np.median(singles) <= 6.0
    # Each blink shuts the eyes fully and briefly.
    closed_frames = sum(1 for s in states if s.eye_close_left > 0.5)
    assert 0.05 <= closed_frames / RATE / blinks <= 0.12
    assert max(s.eye_close_left for s in states) == 1.0
    assert BLINK_DURATION_S == pytest.approx(0.17, abs=0.03)


def test_double_blinks_happen() -> None:
    doubles = 0
    for seed in range(20):
        gaps = np.diff(IdleAnimator(seed).blink_times(0.0, 120.0))
        doubles += int(np.count_nonzero(gaps < 1.0))
    assert doubles >= 5


def test_blink_spacing_holds_across_block_seams() -> None:
    anim = IdleAnimator(9)
    starts = anim.blink_times(0.0, 600.0)
    gaps = np.diff(starts)
    assert gaps[gaps > 1.0].min() >= 2.0
    assert gaps.max() <= 10.0


def test_values_stay_in_bounds() -> None:
    for seed in (0, 5):
        for speaking in (0.0, 1.0):
            for s in sample(IdleAnimator(seed), 1000.0, 60.0, speaking):
                assert s.mouth == REST_MOUTH
                assert 0.0 <= s.eye_close_left <= 1.0 and s.eye_close_left == s.eye_close_right
                assert 0.0 <= s.breath <= 1.0
                assert -1.0 <= s.brow <= 1.0 and 0.0 <= s.smile <= 1.0
                assert -1.0 <= s.gaze_x <= 1.0 and -1.0 <= s.gaze_y <= 1.0
                for angle in (s.head_yaw, s.head_pitch, s.head_roll):
                    assert abs(angle) <= 5.0


def test_breathing_is_about_a_quarter_hertz() -> None:
    breath = np.array([s.breath for s in sample(IdleAnimator(3), 0.0, 60.0)])
    peaks = np.count_nonzero((breath[1:-1] > breath[:-2]) & (breath[1:-1] >= breath[2:]))
    assert 13 <= peaks <= 17
    assert breath.min() <= 0.02 and breath.max() >= 0.98


def test_head_sways_gently_and_more_when_speaking() -> None:
    anim = IdleAnimator(4)
    quiet = sample(anim, 0.0, 60.0)
    talking = sample(anim, 0.0, 60.0, speaking=True)
    yaw = np.array([s.head_yaw for s in quiet])
    assert 0.3 <= yaw.std() <= 2.0  # it moves, by a degree or two
    for name in ("head_yaw", "head_pitch", "head_roll"):
        calm = np.diff([getattr(s, name) for s in quiet])
        busy = np.diff([getattr(s, name) for s in talking])
        assert np.abs(busy).mean() > 1.5 * np.abs(calm).mean(), name
    brow_quiet = np.array([s.brow for s in quiet])
    brow_talking = np.array([s.brow for s in talking])
    assert brow_talking.max() > brow_quiet.max() + 0.05


def test_speaking_can_be_blended_in() -> None:
    anim = IdleAnimator(4)
    t = 12.3
    still, half, full = (anim.state_at(t, w).head_pitch for w in (0.0, 0.5, 1.0))
    assert half == pytest.approx((still + full) / 2)
    assert anim.state_at(t, True) == anim.state_at(t, 1.0)


def test_motion_is_continuous() -> None:
    states = sample(IdleAnimator(11), 25.0, 70.0, speaking=1.0)  # crosses two block seams
    for name, limit in (("head_yaw", 0.2), ("head_pitch", 0.2), ("head_roll", 0.2), ("breath", 0.05),
                        ("gaze_x", 0.2), ("gaze_y", 0.2), ("brow", 0.05), ("smile", 0.01)):  # fmt: skip
        steps = np.abs(np.diff([getattr(s, name) for s in states]))
        assert steps.max() <= limit, name


def test_gaze_shifts_now_and_then() -> None:
    gaze = np.array([s.gaze_x for s in sample(IdleAnimator(6), 0.0, 60.0)])
    saccades = np.count_nonzero(np.abs(np.diff(gaze)) > 0.01)
    assert saccades >= 10
    assert np.abs(gaze).max() <= 0.3


def test_any_time_works_but_not_nan() -> None:
    anim = IdleAnimator(0)
    for t in (-1e6, -0.001, 0.0, 29.9999, 30.0, 1e7):
        state = anim.state_at(t)
        assert math.isfinite(state.head_yaw) and 0.0 <= state.eye_close_left <= 1.0
    with pytest.raises(ValueError, match="finite"):
        anim.state_at(math.nan)
    with pytest.raises(TypeError, match="seed"):
        IdleAnimator("0")  # type: ignore[arg-type]


def test_speaking_weight_ramps_in_and_out() -> None:
    assert speaking_weight(0.9, 1.0, 3.0) == 0.0
    assert speaking_weight(1.0, 1.0, 3.0) == 0.0
    assert 0.0 < speaking_weight(1.1, 1.0, 3.0) < 1.0
    assert speaking_weight(2.0, 1.0, 3.0) == 1.0
    assert 0.0 < speaking_weight(3.1, 1.0, 3.0) < 1.0
    assert speaking_weight(3.5, 1.0, 3.0) == 0.0
    # Continuous everywhere, including speech shorter than the ramp.
    for start, end in ((1.0, 3.0), (1.0, 1.1)):
        w = [speaking_weight(k / 1000, start, end) for k in range(4000)]
        assert max(abs(b - a) for a, b in itertools.pairwise(w)) <= 0.01
    anim = IdleAnimator(2)
    poses = [anim.state_at(k / 100, speaking_weight(k / 100, 1.0, 3.0)).head_pitch for k in range(400)]
    assert max(abs(b - a) for a, b in itertools.pairwise(poses)) <= 0.1
