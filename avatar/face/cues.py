"""What animation needs from a face mesh: mouth, lids, brows, gaze and head pose.

``measure_cues`` turns one ``FaceLandmarks`` into ``FaceCues``: raw, scale-free measurements
(lengths in units of the outer eye-corner distance, so they do not depend on how far the face
is from the camera). ``to_face_state`` maps them onto ``FaceState`` against a ``Calibration``
of the person's neutral face (population defaults, or learnt live by ``FacePuppet``).

The photo renderer uses ``MOUTH_GAP_AT_FULL_OPEN`` too: a rendered photo avatar with
``mouth.open = x`` shows an inner-lip gap of ``x * MOUTH_GAP_AT_FULL_OPEN`` eye distances, which
is what makes a webcam-driven avatar open its mouth as far as the operator does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from avatar.face import topology as T
from avatar.face.landmarks import FaceLandmarks
from avatar.face_state import FaceState, MouthShape

MOUTH_GAP_AT_FULL_OPEN = 0.30
"""Inner-lip gap, in outer eye-corner distances, of ``MouthShape.open == 1`` (a wide "aa")."""

# A generic adult head, in mm, OpenCV object axes (x to the image right, y down, z away from the
# camera), origin at the nose tip; rows follow ``topology.POSE_LANDMARKS``. The mean, made
# left-right symmetric, of the face mesh's own 3D landmarks on four level frontal portraits
# (scaled to a 90 mm eye-corner distance): a generic head, so a level face reads as level.
POSE_MODEL_POINTS = np.array(
    [
        (0.0, 0.0, 0.0),  # nose tip
        (0.0, 74.0, 39.0),  # chin
        (0.0, -90.0, 26.0),  # forehead
        (0.0, -44.0, 21.0),  # nose bridge
        (-45.0, -40.5, 44.0),  # subject's right eye, outer corner (image left)
        (45.0, -40.5, 44.0),  # subject's left eye, outer corner
        (-17.0, -39.0, 39.0),  # right eye, inner corner
        (17.0, -39.0, 39.0),  # left eye, inner corner
        (-30.0, 23.0, 40.0),  # right mouth corner
        (30.0, 23.0, 40.0),  # left mouth corner
        (-70.0, -22.0, 99.0),  # right cheek outline
        (70.0, -22.0, 99.0),  # left cheek outline
    ],
    dtype=np.float64,
)


@dataclass(frozen=True, slots=True)
class FaceCues:
    """Raw measurements of one face. Lengths are in outer eye-corner distances; angles in
    degrees with ``FaceState``'s signs (yaw + turns to the subject's left, pitch + up, roll +
    clockwise as seen in the image)."""

    mouth_gap: float  # inner-lip gap at the middle of the mouth
    mouth_width: float  # corner to corner
    smile_lift: float  # how far the corners sit above the middle of the lips
    lid_left: float  # subject's left eye: lid opening over eye width (eye aspect ratio)
    lid_right: float
    brow_left: float  # brow above the eye centre
    brow_right: float
    gaze_x: float  # iris offset from the eye centre, in half eye widths, + to the subject's left
    gaze_y: float  # + up
    yaw: float
    pitch: float
    roll: float


@dataclass(frozen=True, slots=True)
class Calibration:
    """A person's neutral measurements, the reference ``to_face_state`` compares against."""

    mouth_width: float = 0.50
    smile_lift: float = 0.0
    lid_open: float = 0.30  # eye aspect ratio with the eyes naturally open
    lid_shut: float = 0.06  # eye aspect ratio of a closed eye (lashes and lid thickness)
    brow: float = 0.36


DEFAULT_CALIBRATION = Calibration()


def _face_frame(face: FaceLandmarks) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Origin (eye midpoint), x axis (subject's right eye -> left eye), y axis (down), scale."""
    right = face.xy(T.RIGHT_EYE_OUTER).astype(np.float64)
    left = face.xy(T.LEFT_EYE_OUTER).astype(np.float64)
    axis = left - right
    scale = float(np.hypot(axis[0], axis[1]))
    if scale < 1e-6:
        raise ValueError("degenerate face: eye corners coincide")
    ex = axis / scale
    ey = np.array([-ex[1], ex[0]])
    return (left + right) / 2.0, ex, ey, scale


def _eye_aspect(face: FaceLandmarks, upper: tuple[int, ...], lower: tuple[int, ...]) -> float:
    u = face.xy(upper).astype(np.float64)
    lo = face.xy(lower).astype(np.float64)
    width = float(np.linalg.norm(u[-1] - u[0]))
    gaps = np.linalg.norm(u[2:-2] - lo[2:-2], axis=1)
    return float(gaps.mean() / max(width, 1e-6))


def head_pose(face: FaceLandmarks) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees, ``FaceState`` signs, from a PnP fit of a generic head."""
    w, h = face.image_size
    image_points = face.xy(T.POSE_LANDMARKS).astype(np.float64)
    # Put the principal point on the nose: the pose is then relative to the line of sight to the
    # camera, so a face looking into the lens reads level wherever it sits in the frame.
    cx, cy = (float(v) for v in face.xy(T.NOSE_TIP))
    focal = float(max(w, h))
    camera = np.array([[focal, 0.0, cx], [0.0, focal, cy], [0.0, 0.0, 1.0]])
    ok, rvec, _tvec = cv2.solvePnP(
        POSE_MODEL_POINTS, image_points, camera, np.zeros(4), flags=cv2.SOLVEPNP_SQPNP
    )
    if not ok:
        return (0.0, 0.0, 0.0)
    rot, _ = cv2.Rodrigues(rvec)
    # R = Rz(roll) @ Ry(yaw) @ Rx(pitch) in camera axes (x right, y down, z forward).
    yaw = math.degrees(math.asin(max(-1.0, min(1.0, -rot[2, 0]))))
    pitch = math.degrees(math.atan2(rot[2, 1], rot[2, 2]))
    roll = math.degrees(math.atan2(rot[1, 0], rot[0, 0]))
    # Camera y points down, so a head turning to its left (nose to image +x) is a negative
    # rotation about y, looking up a negative one about x; clockwise in the image is +z.
    return (-yaw, -pitch, roll)


def measure_cues(face: FaceLandmarks) -> FaceCues:
    """Scale-free measurements of ``face`` (468 points at least; gaze needs the 478 with irises)."""
    origin, ex, ey, scale = _face_frame(face)

    def local(index: int | tuple[int, ...]) -> np.ndarray:
        p = face.xy(index).astype(np.float64) - origin
        return np.stack([p @ ex, p @ ey], axis=-1) / scale

    gap = float(np.linalg.norm(local(T.LIP_LOWER_INNER_MID) - local(T.LIP_UPPER_INNER_MID)))
    corner_r, corner_l = local(T.MOUTH_CORNER_RIGHT), local(T.MOUTH_CORNER_LEFT)
    width = float(np.linalg.norm(corner_l - corner_r))
    lips_mid_y = float((local(T.LIP_UPPER_INNER_MID)[1] + local(T.LIP_LOWER_INNER_MID)[1]) / 2.0)
    smile_lift = lips_mid_y - float((corner_r[1] + corner_l[1]) / 2.0)

    lid_left = _eye_aspect(face, T.LEFT_EYE_UPPER, T.LEFT_EYE_LOWER)
    lid_right = _eye_aspect(face, T.RIGHT_EYE_UPPER, T.RIGHT_EYE_LOWER)

    def brow_height(brow: tuple[int, ...], upper: tuple[int, ...], lower: tuple[int, ...]) -> float:
        eye_centre = (local(upper).mean(axis=0) + local(lower).mean(axis=0)) / 2.0
        return float(eye_centre[1] - local(brow).mean(axis=0)[1])

    brow_left = brow_height(T.LEFT_BROW, T.LEFT_EYE_UPPER, T.LEFT_EYE_LOWER)
    brow_right = brow_height(T.RIGHT_BROW, T.RIGHT_EYE_UPPER, T.RIGHT_EYE_LOWER)

    gaze_x = gaze_y = 0.0
    if face.points.shape[0] >= T.NUM_LANDMARKS_WITH_IRISES:
        offsets = []
        for iris, upper, lower in (
            (T.LEFT_IRIS[0], T.LEFT_EYE_UPPER, T.LEFT_EYE_LOWER),
            (T.RIGHT_IRIS[0], T.RIGHT_EYE_UPPER, T.RIGHT_EYE_LOWER),
        ):
            u, lo = local(upper), local(lower)
            centre = (u[0] + u[-1]) / 2.0
            half_width = float(np.linalg.norm(u[-1] - u[0])) / 2.0
            mid_y = float((u[len(u) // 2][1] + lo[len(lo) // 2][1]) / 2.0)
            p = local(iris)
            offsets.append(((p[0] - centre[0]) / half_width, (mid_y - p[1]) / half_width))
        gaze_x = float(np.mean([o[0] for o in offsets]))
        gaze_y = float(np.mean([o[1] for o in offsets]))

    yaw, pitch, roll = head_pose(face)
    return FaceCues(
        mouth_gap=gap,
        mouth_width=width,
        smile_lift=smile_lift,
        lid_left=lid_left,
        lid_right=lid_right,
        brow_left=brow_left,
        brow_right=brow_right,
        gaze_x=gaze_x,
        gaze_y=gaze_y,
        yaw=yaw,
        pitch=pitch,
        roll=roll,
    )


def _clip(x: float, lo: float, hi: float) -> float:
    return lo if x < lo else hi if x > hi else x


def eye_closure(lid_ratio: float, calib: Calibration = DEFAULT_CALIBRATION) -> float:
    """0 open .. 1 shut, from an eye aspect ratio."""
    span = max(calib.lid_open - calib.lid_shut, 1e-3)
    return _clip((calib.lid_open - lid_ratio) / span, 0.0, 1.0)


def to_face_state(cues: FaceCues, calib: Calibration = DEFAULT_CALIBRATION, base: FaceState | None = None) -> FaceState:
    """The ``FaceState`` that shows ``cues`` on an avatar; fields cues cannot tell (breath)
    come from ``base``."""
    base = base or FaceState()
    open_ = _clip(cues.mouth_gap / MOUTH_GAP_AT_FULL_OPEN, 0.0, 1.0)
    rel_width = cues.mouth_width / max(calib.mouth_width, 1e-3) - 1.0
    # Rounded lips ("oo") narrow the mouth; spread lips ("ee") widen it by about a fifth.
    width = _clip(rel_width / 0.2, -1.0, 1.0)
    round_ = _clip(-rel_width / 0.2, 0.0, 1.0) * _clip(open_ * 4.0, 0.0, 1.0)
    mouth = MouthShape(open=open_, width=width, round=round_, teeth=_clip(open_ * 1.5, 0.0, 1.0) * 0.6)
    brow = ((cues.brow_left + cues.brow_right) / 2.0 - calib.brow) / 0.06
    smile = _clip(FaceState().smile + (cues.smile_lift - calib.smile_lift) / 0.06, 0.0, 1.0)
    return FaceState(
        mouth=mouth,
        eye_close_left=eye_closure(cues.lid_left, calib),
        eye_close_right=eye_closure(cues.lid_right, calib),
        brow=_clip(brow, -1.0, 1.0),
        smile=smile,
        head_yaw=cues.yaw,
        head_pitch=cues.pitch,
        head_roll=cues.roll,
        breath=base.breath,
        gaze_x=_clip(cues.gaze_x, -1.0, 1.0),
        gaze_y=_clip(cues.gaze_y, -1.0, 1.0),
    )
