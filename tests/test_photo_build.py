"""Building photo avatars from portraits: what is stored, what is refused, nothing half-made."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from avatar.face import topology as T
from avatar.face.landmarks import FaceBox, FaceLandmarks, FaceTracker
from avatar.face_state import FaceState
from avatar.render import photo_build
from avatar.render.photo import load_photo_avatar
from avatar.render.photo_build import PhotoAvatarError, build_photo_avatar

FACES = Path(__file__).parent / "data" / "faces"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tracker() -> FaceTracker:
    return FaceTracker()


def _leftovers(avatars_dir: Path) -> list[str]:
    return sorted(p.name for p in avatars_dir.iterdir()) if avatars_dir.exists() else []


@pytest.mark.parametrize("photo", ["astronaut.jpg", "hopper.jpg", "obama.jpg", "biden.jpg"])
def test_builds_an_avatar_from_each_portrait(photo: str, tmp_path: Path, tracker: FaceTracker) -> None:
    avatars = tmp_path / "avatars"
    info = build_photo_avatar(FACES / photo, avatars, "presenter", title="Presenter", tracker=tracker)
    assert info.path == avatars / "presenter"
    assert _leftovers(avatars) == ["presenter"]  # no temporary directories left
    meta = json.loads((info.path / "avatar.json").read_text())
    assert meta["kind"] == "photo" and meta["title"] == "Presenter" and meta["source"] == photo
    assert (meta["width"], meta["height"]) == (512, 512)
    crop = Image.open(info.path / "portrait.jpg")
    matte = Image.open(info.path / "matte.png")
    assert crop.size == matte.size and crop.size[0] == crop.size[1]  # the stage's aspect
    mesh = json.loads((info.path / "mesh.json").read_text())
    verts = np.asarray(mesh["vertices"])
    assert mesh["landmark_count"] == T.NUM_LANDMARKS_WITH_IRISES
    assert len(verts) == T.NUM_LANDMARKS_WITH_IRISES + len(T.FACE_OVAL)
    assert len(mesh["triangles"]) > 800
    # Framed: eyes level, at the framing height, centred, the face a fixed share of the frame.
    right, left = verts[T.RIGHT_EYE_OUTER], verts[T.LEFT_EYE_OUTER]
    assert abs(left[1] - right[1]) < 0.02
    mid = (left + right) / 2.0
    assert mid[0] == pytest.approx(photo_build.FRAME_EYE_X, abs=0.03)
    eye_distance = float(np.hypot(*(left - right)))
    if not meta["face"]["padded"]:
        assert photo_build.FRAME_EYE_DISTANCE - 0.02 <= eye_distance <= photo_build.FRAME_EYE_DISTANCE_MAX + 0.02
    # The matte separates the person from the background.
    alpha = np.asarray(matte, dtype=np.float32) / 255.0
    h, w = alpha.shape
    nose = verts[T.NOSE_TIP] * (w, h)
    assert alpha[int(nose[1]), int(nose[0])] > 0.9
    assert min(alpha[2, 2], alpha[2, w - 3]) < 0.5 or meta["face"]["padded"]
    avatar = load_photo_avatar(info.path, 512, 512)
    assert avatar.render(FaceState()).shape == (512, 512, 3)


@pytest.mark.parametrize(
    ("photo", "reason", "words"),
    [
        ("two_faces.jpg", "several_faces", "2 faces found"),
        ("no_face.jpg", "no_face", "no face found"),
        ("not_an_image.jpg", "not_an_image", "not a JPEG or PNG image"),
        ("small_face.jpg", "face_too_small", "too small"),
        ("missing.jpg", "not_an_image", "no such file"),
    ],
)
def test_refuses_unusable_photos_with_reason(
    photo: str, reason: str, words: str, tmp_path: Path, tracker: FaceTracker
) -> None:
    avatars = tmp_path / "avatars"
    with pytest.raises(PhotoAvatarError) as err:
        build_photo_avatar(FACES / photo, avatars, "nobody", tracker=tracker)
    assert err.value.reason == reason
    assert words in str(err.value) and photo in str(err.value)
    assert _leftovers(avatars) == []


class _TurnedFaceTracker:
    """Stands in for the tracker with a real face mesh turned in 3D (a real photo of a turned
    head that also passes the other checks is not among the test photos)."""

    def __init__(self, face: FaceLandmarks, yaw_degrees: float) -> None:
        pts = face.points.astype(np.float64).copy()
        centre = pts[: T.NUM_LANDMARKS].mean(axis=0)
        a = math.radians(yaw_degrees)
        rot = np.array([[math.cos(a), 0.0, math.sin(a)], [0.0, 1.0, 0.0], [-math.sin(a), 0.0, math.cos(a)]])
        turned = (pts - centre) @ rot.T + centre
        self.face = FaceLandmarks(turned.astype(np.float32), face.image_size)

    def find_faces(self, image: np.ndarray) -> list[FaceBox]:
        x0, y0, x1, y1 = self.face.bbox
        return [FaceBox(x0, y0, x1 - x0, y1 - y0, 0.9)]

    def landmarks_in(self, image: np.ndarray, box: FaceBox) -> FaceLandmarks:
        return self.face


def test_refuses_a_face_turned_away(tmp_path: Path, tracker: FaceTracker) -> None:
    image = np.asarray(Image.open(FACES / "hopper.jpg").convert("RGB"))
    face = tracker.landmarks(image)[0]
    turned = _TurnedFaceTracker(face, 45.0)
    with pytest.raises(PhotoAvatarError) as err:
        photo_build.find_portrait_face(image, turned, label="hopper.jpg")  # type: ignore[arg-type]
    assert err.value.reason == "not_frontal"
    assert "not frontal" in str(err.value) and "sideways" in str(err.value)
    # A slight turn is accepted.
    photo_build.find_portrait_face(image, _TurnedFaceTracker(face, 8.0), label="x")  # type: ignore[arg-type]


def test_existing_avatar_is_kept_unless_replaced(tmp_path: Path, tracker: FaceTracker) -> None:
    avatars = tmp_path / "avatars"
    build_photo_avatar(FACES / "hopper.jpg", avatars, "host", tracker=tracker)
    before = (avatars / "host" / "portrait.jpg").read_bytes()
    with pytest.raises(PhotoAvatarError) as err:
        build_photo_avatar(FACES / "obama.jpg", avatars, "host", tracker=tracker)
    assert err.value.reason == "exists"
    assert (avatars / "host" / "portrait.jpg").read_bytes() == before
    build_photo_avatar(FACES / "obama.jpg", avatars, "host", tracker=tracker, replace=True)
    assert (avatars / "host" / "portrait.jpg").read_bytes() != before
    assert json.loads((avatars / "host" / "avatar.json").read_text())["source"] == "obama.jpg"
    assert _leftovers(avatars) == ["host"]


def test_a_failure_while_writing_leaves_nothing_behind(
    tmp_path: Path, tracker: FaceTracker, monkeypatch: pytest.MonkeyPatch
) -> None:
    avatars = tmp_path / "avatars"
    real_imwrite = photo_build.cv2.imwrite

    def failing_imwrite(path: str, image: np.ndarray, params: list[int]) -> bool:
        if path.endswith("matte.png"):
            return False  # as a full disk would
        return bool(real_imwrite(path, image, params))

    monkeypatch.setattr(photo_build.cv2, "imwrite", failing_imwrite)
    with pytest.raises(OSError, match=r"matte\.png"):
        build_photo_avatar(FACES / "hopper.jpg", avatars, "broken", tracker=tracker)
    assert _leftovers(avatars) == []
