"""Named landmarks of mediapipe's face mesh (468 points, 478 with the refined irises).

Pure data, no mediapipe import: the photo renderer and the cue maths use these without
loading the model. "Left" and "right" are the subject's own (mediapipe's convention):
the subject's right eye is on the image's left in an unmirrored photo.

Contours run from one corner to the other, image-left to image-right, so that upper and
lower contours of the same feature pair up point by point.
"""

from __future__ import annotations

NUM_LANDMARKS = 468
NUM_LANDMARKS_WITH_IRISES = 478

FOREHEAD = 10
NOSE_TIP = 1
NOSE_BASE = 2
CHIN = 152

# Lips: outer and inner contours, corner to corner (61/291 outer corners, 78/308 inner corners).
LIPS_UPPER_OUTER = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291)
LIPS_LOWER_OUTER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291)
LIPS_UPPER_INNER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
LIPS_LOWER_INNER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)
MOUTH_CORNER_RIGHT = 61  # subject's right, image left
MOUTH_CORNER_LEFT = 291
LIP_UPPER_INNER_MID = 13
LIP_LOWER_INNER_MID = 14

# Eyes: upper and lower lid contours, image-left corner to image-right corner.
RIGHT_EYE_UPPER = (33, 246, 161, 160, 159, 158, 157, 173, 133)
RIGHT_EYE_LOWER = (33, 7, 163, 144, 145, 153, 154, 155, 133)
LEFT_EYE_UPPER = (362, 398, 384, 385, 386, 387, 388, 466, 263)
LEFT_EYE_LOWER = (362, 382, 381, 380, 374, 373, 390, 249, 263)
RIGHT_EYE_OUTER, RIGHT_EYE_INNER = 33, 133
LEFT_EYE_OUTER, LEFT_EYE_INNER = 263, 362

# Irises (refined landmarks only): centre then four rim points.
RIGHT_IRIS = (468, 469, 470, 471, 472)
LEFT_IRIS = (473, 474, 475, 476, 477)

# Brows, upper edge, image-left to image-right.
RIGHT_BROW = (70, 63, 105, 66, 107)
LEFT_BROW = (336, 296, 334, 293, 300)

# Face outline, clockwise from the top of the forehead (10).
FACE_OVAL = (
    10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
    152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109,
)  # fmt: skip

NOSE_BRIDGE = 168
CHEEK_RIGHT, CHEEK_LEFT = 234, 454  # face outline level with the eyes

# Landmarks for the head pose fit (see cues.POSE_MODEL_POINTS for their 3D positions).
POSE_LANDMARKS = (
    NOSE_TIP, CHIN, FOREHEAD, NOSE_BRIDGE,
    RIGHT_EYE_OUTER, LEFT_EYE_OUTER, RIGHT_EYE_INNER, LEFT_EYE_INNER,
    MOUTH_CORNER_RIGHT, MOUTH_CORNER_LEFT, CHEEK_RIGHT, CHEEK_LEFT,
)  # fmt: skip


def eye_contours(side: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(upper lid, lower lid) contour of the subject's ``"left"`` or ``"right"`` eye."""
    if side == "left":
        return LEFT_EYE_UPPER, LEFT_EYE_LOWER
    if side == "right":
        return RIGHT_EYE_UPPER, RIGHT_EYE_LOWER
    raise ValueError(f"eye side must be 'left' or 'right', not {side!r}")
