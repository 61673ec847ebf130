"""The photo renderer: geometry measured back with the face mesh, untouched pixels, seams."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from avatar.face import topology as T
from avatar.face.cues import MOUTH_GAP_AT_FULL_OPEN, measure_cues
from avatar.face.landmarks import FaceTracker
from avatar.face_state import FaceState, MouthShape
from avatar.render.photo import PhotoAvatar, PhotoAvatarLoadError, load_photo_avatar

ASTRONAUT = Path(__file__).resolve().parent.parent / "assets" / "avatars" / "astronaut"

STILL = FaceState()  # head motion off: yaw, pitch, roll and breath all 0


@pytest.fixture(scope="module")
def avatar() -> PhotoAvatar:
    return load_photo_avatar(ASTRONAUT, 512, 512)


@pytest.fixture(scope="module")
def tracker() -> FaceTracker:
    return FaceTracker()


def _mouth(open_: float, **more: float) -> FaceState:
    return FaceState(mouth=MouthShape(open=open_, **more))


@pytest.mark.slow
def test_mouth_opening_measured_again_follows_the_request(avatar: PhotoAvatar, tracker: FaceTracker) -> None:
    requested = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    measured = []
    for value in requested:
        faces = tracker.landmarks(avatar.render(_mouth(value)))
        assert len(faces) == 1
        measured.append(measure_cues(faces[0]).mouth_gap / MOUTH_GAP_AT_FULL_OPEN)
    assert all(b > a + 0.05 for a, b in itertools.pairwise(measured)), measured
    assert measured[0] < 0.05  # open = 0 closes the photo's smiling, parted lips
    # Within a tenth of the full range of what was asked, through the whole range.
    assert np.abs(np.array(measured) - np.array(requested)).max() < 0.15, measured


@pytest.mark.slow
def test_mouth_width_and_blinks_measured_again(avatar: PhotoAvatar, tracker: FaceTracker) -> None:
    widths = [measure_cues(tracker.landmarks(avatar.render(_mouth(0.3, width=w)))[0]).mouth_width for w in (-1, 0, 1)]
    assert widths[0] < widths[1] < widths[2]
    lids = []
    for close in (0.0, 0.5, 1.0):
        cues = measure_cues(tracker.landmarks(avatar.render(FaceState(eye_close_left=close, eye_close_right=close)))[0])
        lids.append((cues.lid_left + cues.lid_right) / 2.0)
    assert lids[0] > lids[1] > lids[2]
    assert lids[2] < 0.4 * lids[0]
    one = measure_cues(tracker.landmarks(avatar.render(FaceState(eye_close_left=1.0)))[0])
    assert one.lid_left < 0.5 * one.lid_right  # the subject's left eye only


def test_mouth_changes_touch_nothing_but_the_mouth(avatar: PhotoAvatar) -> None:
    rest = avatar.render(STILL)
    x0, y0, x1, y1 = avatar.regions()["mouth"]
    outside = np.ones(rest.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    for state in (_mouth(1.0, teeth=1.0), _mouth(0.4, width=-1.0, round=1.0), _mouth(0.1, tuck=1.0, press=0.5)):
        frame = avatar.render(state)
        assert np.array_equal(frame[outside], rest[outside])
        assert not np.array_equal(frame, rest)
    # The eyes stay exactly as they were while the mouth moves.
    ex0, ey0, ex1, ey1 = avatar.regions()["eyes"]
    lids = (slice(ey0, min(ey1, y0)), slice(ex0, ex1))
    assert np.array_equal(avatar.render(_mouth(0.8))[lids], rest[lids])


def test_far_pixels_are_the_photo_itself(avatar: PhotoAvatar) -> None:
    base = avatar.render(STILL)
    frame = avatar.render(FaceState(mouth=MouthShape(open=0.7), eye_close_left=1.0, eye_close_right=0.6, brow=0.8))
    regions = avatar.regions()
    untouched = np.ones(base.shape[:2], bool)
    for name in ("mouth", "eyes"):
        x0, y0, x1, y1 = regions[name]
        untouched[y0:y1, x0:x1] = False
    assert untouched.mean() > 0.5
    assert np.array_equal(frame[untouched], base[untouched])


def test_no_seam_at_the_warped_regions_borders(avatar: PhotoAvatar) -> None:
    """The warp is the identity on each region's border, so the pasted ROI joins the photo
    without a step: compare each ROI's outermost ring with the unwarped photo."""
    rest = avatar.render(STILL)
    changes = {
        "mouth": FaceState(mouth=MouthShape(open=1.0, width=0.8, round=0.5, teeth=1.0)),
        "eyes": FaceState(eye_close_left=1.0, eye_close_right=1.0, brow=1.0),
    }
    for name, state in changes.items():
        frame = avatar.render(state)
        x0, y0, x1, y1 = avatar.regions()[name]
        ring = np.zeros(rest.shape[:2], bool)
        ring[y0:y1, x0:x1] = True
        ring[y0 + 2 : y1 - 2, x0 + 2 : x1 - 2] = False
        assert np.array_equal(frame[ring], rest[ring]), name
        inside = np.abs(frame[y0:y1, x0:x1].astype(int) - rest[y0:y1, x0:x1].astype(int)).sum(axis=2)
        assert inside.max() > 60, name  # while the inside did change


def test_head_motion_is_smooth_and_bounded(avatar: PhotoAvatar) -> None:
    still = avatar.render(STILL)
    moved = avatar.render(FaceState(head_yaw=10.0, head_pitch=5.0, head_roll=6.0))
    x0, y0, x1, y1 = avatar.regions()["head"]
    outside = np.ones(still.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(moved[outside], still[outside])
    diff = np.abs(moved.astype(int) - still.astype(int)).sum(axis=2)
    assert diff.mean() > 1.0  # the head did move
    # No tearing: the displacement is continuous, so neighbouring pixels of the moved frame
    # differ no more than the photo's own neighbours do (allowing interpolation softening).
    def jumps(img: np.ndarray) -> float:
        g = img.astype(int)
        return float(np.percentile(np.abs(np.diff(g, axis=1)).sum(axis=2), 99.9))

    assert jumps(moved) <= jumps(still) * 1.1 + 3


def test_render_rgba_uses_the_matte(avatar: PhotoAvatar) -> None:
    rgba = avatar.render_rgba(_mouth(0.5))
    assert rgba.shape == (512, 512, 4) and rgba.dtype == np.uint8
    assert np.array_equal(rgba[..., :3], avatar.render(_mouth(0.5)))
    nose = avatar.face_landmarks[T.NOSE_TIP].astype(int)
    assert rgba[nose[1], nose[0], 3] > 230
    assert rgba[5, 5, 3] < 40 and rgba[5, 506, 3] < 40  # the studio backdrop is transparent
    moved = avatar.render_rgba(FaceState(head_yaw=10.0))
    assert moved.shape == (512, 512, 4)


def test_frames_are_deterministic_and_caller_owned(avatar: PhotoAvatar) -> None:
    state = FaceState(mouth=MouthShape(open=0.45, teeth=0.5), eye_close_left=0.3, eye_close_right=0.3)
    first = avatar.render(state)
    first_copy = first.copy()
    first[:] = 0  # a caller scribbling on its frame must not reach the cache
    assert np.array_equal(avatar.render(state), first_copy)


def test_other_stage_sizes_reframe_the_portrait() -> None:
    wide = load_photo_avatar(ASTRONAUT, 640, 360)
    frame = wide.render(_mouth(0.5))
    assert frame.shape == (360, 640, 3)
    eyes = (wide.face_landmarks[T.LEFT_EYE_OUTER] + wide.face_landmarks[T.RIGHT_EYE_OUTER]) / 2.0
    assert 0.4 * 640 < eyes[0] < 0.6 * 640 and 0 < eyes[1] < 0.6 * 360
    assert wide.face_landmarks[T.CHIN][1] < 360


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(ASTRONAUT, broken)
    (broken / "mesh.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(PhotoAvatarLoadError, match=r"mesh\.json"):
        load_photo_avatar(broken, 512, 512)
    (broken / "mesh.json").unlink()
    with pytest.raises(PhotoAvatarLoadError, match=r"mesh\.json: missing"):
        load_photo_avatar(broken, 512, 512)
    meta = json.loads((ASTRONAUT / "avatar.json").read_text())
    meta["kind"] = "illustrated"
    (broken / "avatar.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(PhotoAvatarLoadError, match="not 'photo'"):
        load_photo_avatar(broken, 512, 512)
