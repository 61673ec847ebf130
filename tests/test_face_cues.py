"""Face cues: head pose signs, measurements on a real portrait, the mapping to FaceState."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from avatar.face import topology as T
from avatar.face.cues import (
    MOUTH_GAP_AT_FULL_OPEN,
    POSE_MODEL_POINTS,
    Calibration,
    FaceCues,
    eye_closure,
    head_pose,
    measure_cues,
    to_face_state,
)
from avatar.face.landmarks import FaceLandmarks, FaceTracker

FACES = Path(__file__).parent / "data" / "faces"


def _projected_head(yaw: float, pitch: float, roll: float) -> FaceLandmarks:
    """The generic head turned by the given angles (FaceState signs) and seen by a pinhole camera."""
    a, b, c = (math.radians(v) for v in (yaw, pitch, roll))
    # Turning to the subject's left moves the nose to image +x; looking up moves it to image -y.
    rot_y = np.array([[math.cos(a), 0, -math.sin(a)], [0, 1, 0], [math.sin(a), 0, math.cos(a)]])
    rot_x = np.array([[1, 0, 0], [0, math.cos(b), math.sin(b)], [0, -math.sin(b), math.cos(b)]])
    rot_z = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    pts = np.asarray((rot_z @ rot_y @ rot_x @ POSE_MODEL_POINTS.T).T) + np.array([0.0, 0.0, 600.0])
    uv = pts[:, :2] / pts[:, 2:] * 640.0 + (320.0, 240.0)
    full = np.zeros((T.NUM_LANDMARKS_WITH_IRISES, 3), np.float32)
    for row, index in enumerate(T.POSE_LANDMARKS):
        full[index, :2] = uv[row]
    return FaceLandmarks(full, (640, 480))


@pytest.mark.parametrize(
    ("angles", "nose_moves"),
    [((15.0, 0.0, 0.0), "right"), ((-15.0, 0.0, 0.0), "left"), ((0.0, 12.0, 0.0), "up"), ((0.0, -12.0, 0.0), "down")],
)
def test_head_pose_recovers_turns_with_face_state_signs(angles: tuple[float, float, float], nose_moves: str) -> None:
    face = _projected_head(*angles)
    nose = face.xy(T.NOSE_TIP)
    eyes = (face.xy(T.LEFT_EYE_OUTER) + face.xy(T.RIGHT_EYE_OUTER)) / 2.0
    level = _projected_head(0.0, 0.0, 0.0)
    rest = level.xy(T.NOSE_TIP) - (level.xy(T.LEFT_EYE_OUTER) + level.xy(T.RIGHT_EYE_OUTER)) / 2.0
    offset = (nose - eyes) - rest
    # The synthetic turn does what its name says on screen...
    direction = {"right": offset[0] > 1, "left": offset[0] < -1, "up": offset[1] < -1, "down": offset[1] > 1}
    assert direction[nose_moves]
    # ...and the fit reads the same angles back.
    assert head_pose(face) == pytest.approx(angles, abs=0.5)


def test_head_pose_roll_is_clockwise_positive() -> None:
    face = _projected_head(0.0, 0.0, 10.0)
    right, left = face.xy(T.RIGHT_EYE_OUTER), face.xy(T.LEFT_EYE_OUTER)
    assert left[1] > right[1]  # the image-right eye drops: a clockwise tilt on screen
    assert head_pose(face)[2] == pytest.approx(10.0, abs=0.5)


@pytest.fixture(scope="module")
def tracker() -> FaceTracker:
    return FaceTracker()


@pytest.mark.slow
def test_measure_cues_on_a_real_portrait(tracker: FaceTracker) -> None:
    image = np.asarray(Image.open(FACES / "hopper.jpg").convert("RGB"))
    faces = tracker.landmarks(image)
    assert len(faces) == 1
    face = faces[0]
    assert face.points.shape == (T.NUM_LANDMARKS_WITH_IRISES, 3)
    cues = measure_cues(face)
    assert cues.mouth_gap < 0.05  # closed lips
    assert 0.45 < cues.mouth_width < 0.75
    assert 0.15 < cues.lid_left < 0.35 and 0.15 < cues.lid_right < 0.35
    assert abs(cues.yaw) < 15 and abs(cues.pitch) < 15 and abs(cues.roll) < 10
    state = to_face_state(cues)
    assert state.mouth.open < 0.2
    assert state.eye_close_left < 0.5 and state.eye_close_right < 0.5


def _cues(**changes: float) -> FaceCues:
    base = dict(
        mouth_gap=0.0, mouth_width=0.5, smile_lift=0.0, lid_left=0.3, lid_right=0.3, brow_left=0.36,
        brow_right=0.36, gaze_x=0.0, gaze_y=0.0, yaw=0.0, pitch=0.0, roll=0.0,
    )  # fmt: skip
    base.update(changes)
    return FaceCues(**base)


def test_to_face_state_maps_gap_width_and_lids_monotonically() -> None:
    opens = [to_face_state(_cues(mouth_gap=g * MOUTH_GAP_AT_FULL_OPEN)).mouth.open for g in (0.0, 0.25, 0.5, 1.0, 1.5)]
    assert opens == sorted(opens) and opens[0] == 0.0 and opens[-1] == 1.0
    assert opens[2] == pytest.approx(0.5)
    widths = [to_face_state(_cues(mouth_width=w)).mouth.width for w in (0.4, 0.5, 0.6)]
    assert widths[0] < 0 == widths[1] < widths[2]
    calib = Calibration(lid_open=0.28, lid_shut=0.06)
    assert eye_closure(0.28, calib) == 0.0
    assert eye_closure(0.06, calib) == 1.0
    assert 0.4 < eye_closure(0.17, calib) < 0.6
    state = to_face_state(_cues(lid_left=0.06, lid_right=0.3, yaw=12.0, roll=-4.0), calib)
    assert state.eye_close_left == 1.0 and state.eye_close_right == 0.0
    assert (state.head_yaw, state.head_roll) == (12.0, -4.0)


def test_landmark_contours_match_mediapipe_topology() -> None:
    from mediapipe.python.solutions.face_mesh_connections import (
        FACEMESH_FACE_OVAL,
        FACEMESH_LEFT_EYE,
        FACEMESH_LIPS,
        FACEMESH_RIGHT_EYE,
    )

    def edges(contour: tuple[int, ...]) -> set[frozenset[int]]:
        return {frozenset(pair) for pair in itertools.pairwise(contour)}

    lips = {frozenset(e) for e in FACEMESH_LIPS}
    for contour in (T.LIPS_UPPER_OUTER, T.LIPS_LOWER_OUTER, T.LIPS_UPPER_INNER, T.LIPS_LOWER_INNER):
        assert edges(contour) <= lips
    assert edges(T.LEFT_EYE_UPPER) | edges(T.LEFT_EYE_LOWER) == {frozenset(e) for e in FACEMESH_LEFT_EYE}
    assert edges(T.RIGHT_EYE_UPPER) | edges(T.RIGHT_EYE_LOWER) == {frozenset(e) for e in FACEMESH_RIGHT_EYE}
    assert edges((*T.FACE_OVAL, T.FACE_OVAL[0])) == {frozenset(e) for e in FACEMESH_FACE_OVAL}
