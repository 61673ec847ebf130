"""Face-driven mode: a synthesised webcam stream (rendered frames of a known photo avatar) in,
recovered cues out; smoothing; a lost face easing back to neutral."""

from __future__ import annotations

import itertools
import math
import random
from pathlib import Path

import numpy as np
import pytest

from avatar.face.cues import FaceCues
from avatar.face.landmarks import FaceTracker
from avatar.face.puppet import FacePuppet, OneEuroFilter
from avatar.face_state import FaceState, MouthShape
from avatar.render.photo import load_photo_avatar

ASTRONAUT = Path(__file__).resolve().parent.parent / "assets" / "avatars" / "astronaut"
FPS = 25.0


@pytest.fixture(scope="module")
def tracker() -> FaceTracker:
    return FaceTracker()


@pytest.mark.slow
def test_puppet_recovers_mouth_and_lids_from_rendered_frames(tracker: FaceTracker) -> None:
    avatar = load_photo_avatar(ASTRONAUT, 640, 480)  # a webcam-sized frame
    puppet = FacePuppet(tracker)
    t = 0.0

    def show(state: FaceState, frames: int) -> FaceState:
        nonlocal t
        for _ in range(frames):
            puppet.push(avatar.render(state), t)
            t += 1.0 / FPS
        return puppet.state_at(t - 1.0 / FPS)

    show(FaceState(), 25)  # a second of the resting face: the puppet calibrates on it
    opens = [show(FaceState(mouth=MouthShape(open=level)), 8).mouth.open for level in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert all(b > a + 0.08 for a, b in itertools.pairwise(opens)), opens
    assert opens[0] < 0.1 and opens[-1] > 0.75
    assert np.abs(np.array(opens) - np.array([0.0, 0.25, 0.5, 0.75, 1.0])).max() < 0.2, opens

    shut = show(FaceState(eye_close_left=1.0, eye_close_right=1.0), 6)
    assert shut.eye_close_left > 0.7 and shut.eye_close_right > 0.7
    assert shut.mouth.open < 0.15
    reopened = show(FaceState(), 6)
    assert reopened.eye_close_left < 0.25 and reopened.eye_close_right < 0.25
    wink = show(FaceState(eye_close_left=1.0), 6)
    assert wink.eye_close_left > 0.7 > 0.3 > wink.eye_close_right
    assert puppet.faces == puppet.frames  # every rendered frame was tracked


def _cues(gap: float = 0.0, yaw: float = 0.0) -> FaceCues:
    return FaceCues(
        mouth_gap=gap, mouth_width=0.5, smile_lift=0.0, lid_left=0.3, lid_right=0.3, brow_left=0.36,
        brow_right=0.36, gaze_x=0.0, gaze_y=0.0, yaw=yaw, pitch=0.0, roll=0.0,
    )  # fmt: skip


def _streamed(puppet: FacePuppet, cues: FaceCues | None, start: float, seconds: float) -> float:
    t = start
    while t < start + seconds - 1e-9:
        puppet.push_cues(cues, t)
        t += 1.0 / FPS
    return t


def test_lost_face_eases_back_to_neutral() -> None:
    puppet = FacePuppet(FaceTracker(), calibrate=False, ease_out=0.5)
    assert puppet.state_at(0.0) == FaceState()  # nothing seen yet
    t = _streamed(puppet, _cues(gap=0.3, yaw=20.0), 0.0, 1.0)
    tracked = puppet.state_at(t)
    assert tracked.mouth.open > 0.9 and tracked.head_yaw > 19.0
    lost_at = t
    t = _streamed(puppet, None, t, 1.0)  # the face leaves the frame
    samples = [puppet.state_at(lost_at + k * 0.05) for k in range(0, 12)]
    yaws = [s.head_yaw for s in samples]
    assert yaws[0] == pytest.approx(tracked.head_yaw)
    assert all(b <= a + 1e-9 for a, b in itertools.pairwise(yaws))  # monotonic, no bounce
    assert 2.0 < puppet.state_at(lost_at + 0.25).head_yaw < 18.0  # halfway, not a jump
    assert puppet.state_at(lost_at + 0.5) == FaceState()  # fully neutral after ease_out
    assert puppet.state_at(t) == FaceState()


def test_stalled_stream_counts_as_lost_and_returning_face_blends_in() -> None:
    puppet = FacePuppet(FaceTracker(), calibrate=False, lost_after=0.25, ease_out=0.5, reacquire=0.2)
    t = _streamed(puppet, _cues(yaw=15.0), 0.0, 0.6)
    last = t - 1.0 / FPS
    assert puppet.state_at(last + 0.2).head_yaw == pytest.approx(puppet.state_at(last).head_yaw)  # held
    assert puppet.state_at(last + 0.25 + 0.6).head_yaw == 0.0  # no frames: eased back
    back = last + 2.0
    _streamed(puppet, _cues(yaw=15.0), back, 0.4)
    first = puppet.state_at(back)
    assert first.head_yaw < 1.0  # blends from neutral instead of snapping to 15°
    assert puppet.state_at(back + 0.1).head_yaw == pytest.approx(7.5, abs=2.5)
    assert puppet.state_at(back + 0.35).head_yaw == pytest.approx(15.0, abs=0.5)


def test_mirror_mode_swaps_left_and_right() -> None:
    cues = FaceCues(
        mouth_gap=0.1, mouth_width=0.5, smile_lift=0.0, lid_left=0.06, lid_right=0.3, brow_left=0.36,
        brow_right=0.36, gaze_x=0.5, gaze_y=0.2, yaw=12.0, pitch=5.0, roll=-4.0,
    )  # fmt: skip
    copy = FacePuppet(FaceTracker(), calibrate=False)
    mirror = FacePuppet(FaceTracker(), calibrate=False, mirror=True)
    copy.push_cues(cues, 0.0)
    mirror.push_cues(cues, 0.0)
    a, b = copy.state_at(0.0), mirror.state_at(0.0)
    assert a.eye_close_left == 1.0 and a.eye_close_right == 0.0
    assert (b.eye_close_left, b.eye_close_right) == (a.eye_close_right, a.eye_close_left)
    assert (b.head_yaw, b.head_roll, b.gaze_x) == (-a.head_yaw, -a.head_roll, -a.gaze_x)
    assert (b.head_pitch, b.gaze_y, b.mouth) == (a.head_pitch, a.gaze_y, a.mouth)


def test_frames_out_of_order_are_dropped() -> None:
    puppet = FacePuppet(FaceTracker(), calibrate=False)
    puppet.push_cues(_cues(yaw=10.0), 1.0)
    puppet.push_cues(_cues(yaw=-30.0), 0.5)  # older than the last accepted frame
    puppet.push_cues(_cues(yaw=10.0), 1.0)  # same time again
    assert puppet.frames == 1
    assert puppet.state_at(1.0).head_yaw == pytest.approx(10.0)


def test_one_euro_filter_smooths_jitter_and_follows_moves() -> None:
    rng = random.Random(7)
    still = OneEuroFilter(min_cutoff=1.0, beta=0.05)
    raw, out = [], []
    for k in range(200):
        x = 5.0 + rng.gauss(0.0, 1.0)
        raw.append(x)
        out.append(still(x, k / 30.0))
    assert np.std(out[50:]) < 0.4 * np.std(raw[50:])
    assert np.mean(out[50:]) == pytest.approx(5.0, abs=0.5)
    moving = OneEuroFilter(min_cutoff=1.0, beta=0.5)
    lag = []
    for k in range(60):
        t = k / 30.0
        target = 30.0 * math.sin(2 * math.pi * 0.5 * t)
        lag.append(abs(moving(target, t) - target))
    assert max(lag[15:]) < 6.0  # a 30° head turn is followed within a few degrees
