"""Build a photo avatar from one portrait: ``<avatars_dir>/<name>/``.

The portrait must show exactly one face (a second face at least half the size of the main one
counts; smaller faces in the background are ignored), turned at most ``MAX_TURN_DEGREES`` from
frontal and at least ``MIN_EYE_DISTANCE_PX`` between the outer eye corners. Anything else is a
``PhotoAvatarError`` whose ``reason`` says which, and nothing is left behind: the avatar is
built in a temporary directory beside the destination and renamed into place at the end.

What an avatar directory holds (all paths relative to it):

``avatar.json``
    ``{"kind": "photo", "name", "title", "source", "version": 1, "width", "height",
    "image": "portrait.jpg", "matte": "matte.png", "mesh": "mesh.json", "face": {...}}``;
    ``width``/``height`` are the stage size it was framed for (the renderer reframes for
    other sizes).
``portrait.jpg``
    The framed crop of the photo (eyes levelled), at the photo's own resolution (at most
    ``MAX_CROP_SIDE`` px), with the stage's aspect ratio.
``matte.png``
    8-bit person matte of the crop (mediapipe selfie segmentation): the alpha of ``render_rgba``.
``mesh.json``
    ``vertices``: the 478 face-mesh landmarks of the crop followed by a ring of fixed points
    around the face, as ``[x, y]`` in 0..1 of the crop; ``landmark_count``; ``triangles``: the
    face mesh's own tessellation plus strips closing the eye and mouth openings and a band out
    to the ring. The renderer warps lips, jaw and lids on this mesh.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from avatar.face import topology as T
from avatar.face.landmarks import FaceLandmarks, FaceTracker

MIN_EYE_DISTANCE_PX = 48.0
"""Smallest outer eye-corner distance in the photo: below it lips and lids are a few pixels."""
MAX_TURN_DEGREES = 25.0
"""Largest yaw or pitch accepted: beyond it a flat warp of the face looks wrong."""
MAX_ROLL_DEGREES = 35.0
"""Larger head tilts are refused; smaller ones are levelled when the photo is framed."""
MAX_CROP_SIDE = 1024
SECOND_FACE_RATIO = 0.5
"""A second face counts when it is at least this fraction of the main face's size."""

# Framing, as fractions of the stage: where the eye midpoint sits and how far apart the outer
# eye corners are (a head-and-shoulders presenter shot).
FRAME_EYE_X = 0.5
FRAME_EYE_Y = 0.40
FRAME_EYE_DISTANCE = 0.19
FRAME_EYE_DISTANCE_MAX = 0.27  # zoom in up to this far before padding a photo that is too tight

FACE_RING_SCALE = 1.3
"""The fixed ring of mesh points lies this far out from the face centre, relative to the outline."""

REASONS = ("not_an_image", "no_face", "several_faces", "not_frontal", "face_too_small", "exists")


class PhotoAvatarError(ValueError):
    """The photo cannot become an avatar. ``reason`` is one of ``REASONS``; the message says why
    in words a user can act on."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class PhotoAvatarInfo:
    name: str
    path: Path
    title: str
    eye_distance_px: float
    yaw: float
    pitch: float
    roll: float


def load_portrait(photo: Path) -> np.ndarray:
    """The photo as RGB uint8, upright per its EXIF orientation. Raises ``PhotoAvatarError``
    (``not_an_image``) for anything that is not a readable image."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(photo) as im:
            im.load()
            upright = ImageOps.exif_transpose(im) or im
            if upright.mode in ("RGBA", "LA", "PA") or "transparency" in upright.info:
                # A cut-out portrait: put it on white, not on whatever its hidden pixels hold.
                rgba = upright.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                upright = Image.alpha_composite(white, rgba)
            rgb = np.asarray(upright.convert("RGB"))
    except FileNotFoundError as exc:
        raise PhotoAvatarError("not_an_image", f"{photo}: no such file") from exc
    except IsADirectoryError as exc:
        raise PhotoAvatarError("not_an_image", f"{photo}: is a directory, not an image") from exc
    except Image.DecompressionBombError as exc:
        raise PhotoAvatarError("not_an_image", f"{photo}: the image is too large to read safely") from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise PhotoAvatarError("not_an_image", f"{photo}: not a JPEG or PNG image") from exc
    if rgb.shape[0] < 64 or rgb.shape[1] < 64:
        raise PhotoAvatarError("face_too_small", f"{photo}: the image is only {rgb.shape[1]}x{rgb.shape[0]} px")
    return np.ascontiguousarray(rgb)


def find_portrait_face(image: np.ndarray, tracker: FaceTracker, label: str = "the photo") -> FaceLandmarks:
    """The one usable face of a portrait, or ``PhotoAvatarError`` saying why there is none."""
    boxes = tracker.find_faces(image)
    if not boxes:
        faces = tracker.landmarks(image)  # very close-up selfies can escape the full-range detector
        if not faces:
            raise PhotoAvatarError("no_face", f"{label}: no face found; use a portrait photo of one person")
        if len(faces) > 1 and faces[1].eye_distance() >= SECOND_FACE_RATIO * faces[0].eye_distance():
            raise PhotoAvatarError("several_faces", f"{label}: {len(faces)} faces found; use a photo of one person")
        face = faces[0]
    else:
        boxes = sorted(boxes, key=lambda b: -b.width * b.height)
        main = boxes[0]
        others = [b for b in boxes[1:] if b.width >= SECOND_FACE_RATIO * main.width]
        if others:
            raise PhotoAvatarError(
                "several_faces", f"{label}: {1 + len(others)} faces found; use a photo of one person"
            )
        found = tracker.landmarks_in(image, main)
        if found is None:
            raise PhotoAvatarError(
                "no_face", f"{label}: a face was detected but its features could not be located; use a clearer portrait"
            )
        face = found
    from avatar.face.cues import head_pose

    eye_distance = face.eye_distance()
    if eye_distance < MIN_EYE_DISTANCE_PX:
        raise PhotoAvatarError(
            "face_too_small",
            f"{label}: the face is too small ({eye_distance:.0f} px between the outer eye corners, "
            f"at least {MIN_EYE_DISTANCE_PX:.0f} needed); use a closer or larger photo",
        )
    yaw, pitch, _ = head_pose(face)
    roll = _eye_line_roll(face)
    turn = max(abs(yaw), abs(pitch))
    if turn > MAX_TURN_DEGREES or abs(roll) > MAX_ROLL_DEGREES:
        what = f"turned {abs(yaw):.0f}° sideways" if abs(yaw) >= abs(pitch) else f"tilted {abs(pitch):.0f}° up or down"
        if abs(roll) > MAX_ROLL_DEGREES:
            what = f"tilted {abs(roll):.0f}° to the side"
        raise PhotoAvatarError(
            "not_frontal",
            f"{label}: the face is not frontal ({what}; at most {MAX_TURN_DEGREES:.0f}° allowed); "
            "use a photo looking into the camera",
        )
    return face


def _eye_line_roll(face: FaceLandmarks) -> float:
    d = face.xy(T.LEFT_EYE_OUTER) - face.xy(T.RIGHT_EYE_OUTER)
    return math.degrees(math.atan2(float(d[1]), float(d[0])))


def frame_portrait(
    image: np.ndarray, face: FaceLandmarks, width: int, height: int
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Crop, level and scale ``image`` to a head-and-shoulders frame with the stage's aspect.

    Returns (crop, 2x3 affine from image to crop pixels, whether the crop had to be padded).
    The crop keeps the photo's resolution (no upscaling), at most ``MAX_CROP_SIDE`` px long.
    """
    h, w = image.shape[:2]
    eyes = (face.xy(T.LEFT_EYE_OUTER) + face.xy(T.RIGHT_EYE_OUTER)) / 2.0
    roll = math.radians(_eye_line_roll(face))
    eye_distance = face.eye_distance()
    aspect = width / height
    # Crop size in photo pixels for a given framing fraction f: eye_distance = f * min side.
    def crop_size(fraction: float) -> tuple[float, float]:
        short = eye_distance / fraction
        return (short * aspect, short) if aspect >= 1 else (short, short / aspect)

    def corners(fraction: float, eye_y: float) -> np.ndarray:
        cw, ch = crop_size(fraction)
        local = np.array([[0, 0], [cw, 0], [cw, ch], [0, ch]], dtype=np.float64)
        local -= (FRAME_EYE_X * cw, eye_y * ch)
        c, s = math.cos(roll), math.sin(roll)
        rot = np.array([[c, -s], [s, c]])
        return np.asarray(local @ rot.T + eyes)

    def inside(fraction: float, eye_y: float) -> bool:
        pts = corners(fraction, eye_y)
        return bool(
            (pts[:, 0] >= -0.5).all()
            and (pts[:, 0] <= w - 0.5).all()
            and (pts[:, 1] >= -0.5).all()
            and (pts[:, 1] <= h - 0.5).all()
        )

    # The preferred framing first; then, rather than invent border pixels, zoom in (a tighter
    # shot) and raise the eye line (for photos cut just above the head), within limits.
    choices = [
        (float(f), eye_y)
        for f in np.linspace(FRAME_EYE_DISTANCE, FRAME_EYE_DISTANCE_MAX, 9)
        for eye_y in (FRAME_EYE_Y, FRAME_EYE_Y - 0.03, FRAME_EYE_Y - 0.06)
    ]
    fraction, eye_y = next(((f, y) for f, y in choices if inside(f, y)), (FRAME_EYE_DISTANCE_MAX, FRAME_EYE_Y))
    padded = not inside(fraction, eye_y)
    cw, ch = crop_size(fraction)
    scale = min(1.0, MAX_CROP_SIDE / max(cw, ch))
    out_w = max(2, round(cw * scale))
    out_h = max(2, round(out_w / aspect))
    src = corners(fraction, eye_y)[[0, 1, 3]].astype(np.float32)
    dst = np.array([[0, 0], [out_w, 0], [0, out_h]], dtype=np.float32)
    affine = cv2.getAffineTransform(src, dst)
    interp = cv2.INTER_AREA if scale < 0.999 else cv2.INTER_CUBIC
    crop = cv2.warpAffine(image, affine, (out_w, out_h), flags=interp, borderMode=cv2.BORDER_REPLICATE)
    return crop, affine, padded


def tessellation_triangles() -> list[tuple[int, int, int]]:
    """Triangles of mediapipe's face mesh (its tessellation lists edges; faces are its 3-cliques)."""
    from mediapipe.python.solutions.face_mesh_connections import FACEMESH_TESSELATION

    edges = {tuple(sorted(e)) for e in FACEMESH_TESSELATION}
    adjacent: dict[int, set[int]] = {}
    for a, b in edges:
        adjacent.setdefault(a, set()).add(b)
        adjacent.setdefault(b, set()).add(a)
    triangles: set[tuple[int, int, int]] = set()
    for a, b in edges:
        for c in adjacent[a] & adjacent[b]:
            i, j, k = sorted((a, b, c))
            triangles.add((i, j, k))
    return sorted(triangles)


def _strip(upper: tuple[int, ...], lower: tuple[int, ...]) -> list[tuple[int, int, int]]:
    """Triangles closing the opening between two contours that share their end points."""
    tris = []
    n = len(upper)
    for i in range(n - 1):
        u0, u1, l0, l1 = upper[i], upper[i + 1], lower[i], lower[i + 1]
        if i == 0:
            tris.append((u0, u1, l1))
        elif i == n - 2:
            tris.append((u0, u1, l0))
        else:
            tris.append((u0, u1, l1))
            tris.append((u0, l1, l0))
    return tris


def build_mesh(landmarks: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """Warp mesh vertices (landmarks then ring points, same units as ``landmarks``) and triangles."""
    pts = landmarks[:, :2].astype(np.float64)
    oval = list(T.FACE_OVAL)
    centre = pts[oval].mean(axis=0)
    ring = centre + (pts[oval] - centre) * FACE_RING_SCALE
    vertices = np.vstack([pts, ring])
    first_ring = len(pts)
    triangles = list(tessellation_triangles())
    triangles += _strip(T.LIPS_UPPER_INNER, T.LIPS_LOWER_INNER)
    triangles += _strip(T.RIGHT_EYE_UPPER, T.RIGHT_EYE_LOWER)
    triangles += _strip(T.LEFT_EYE_UPPER, T.LEFT_EYE_LOWER)
    n = len(oval)
    for i in range(n):
        o0, o1 = oval[i], oval[(i + 1) % n]
        r0, r1 = first_ring + i, first_ring + (i + 1) % n
        triangles.append((o0, o1, r0))
        triangles.append((o1, r1, r0))
    return vertices, triangles


def build_photo_avatar(
    photo: Path,
    avatars_dir: Path,
    name: str,
    *,
    title: str | None = None,
    source: str | None = None,
    width: int = 512,
    height: int = 512,
    tracker: FaceTracker | None = None,
    replace: bool = False,
) -> PhotoAvatarInfo:
    """Build ``<avatars_dir>/<name>/`` from ``photo``; see the module docstring for the layout.

    Raises ``PhotoAvatarError`` (and leaves no trace) when the photo is unusable, or with
    reason ``exists`` when the avatar exists and ``replace`` is false.
    """
    photo = Path(photo)
    avatars_dir = Path(avatars_dir)
    final = avatars_dir / name
    if final.exists() and not replace:
        raise PhotoAvatarError("exists", f"avatar {name!r} already exists in {avatars_dir}")
    image = load_portrait(photo)
    tracker = tracker or FaceTracker()
    face = find_portrait_face(image, tracker, label=str(photo))
    from avatar.face.cues import head_pose

    yaw, pitch, _ = head_pose(face)
    roll = _eye_line_roll(face)
    crop, affine, padded = frame_portrait(image, face, width, height)
    ch, cw = crop.shape[:2]

    # Landmarks measured again on the framed crop are more precise than mapped ones; fall back
    # to the mapped ones if the crop's face escapes the mesh's own detector.
    refound = tracker.landmarks(crop)
    if refound:
        points = refound[0].points[:, :2].astype(np.float64)
    else:
        mapped = np.hstack([face.points[:, :2].astype(np.float64), np.ones((face.points.shape[0], 1))])
        points = np.asarray(mapped @ affine.T.astype(np.float64))
    matte = tracker.person_matte(crop)

    vertices, triangles = build_mesh(points)
    norm = vertices / np.array([cw, ch], dtype=np.float64)
    mesh = {
        "landmark_count": int(points.shape[0]),
        "vertices": [[round(float(x), 5), round(float(y), 5)] for x, y in norm],
        "triangles": [list(map(int, t)) for t in triangles],
    }
    meta = {
        "kind": "photo",
        "name": name,
        "title": title or name.replace("-", " ").replace("_", " ").title(),
        "source": source or photo.name,
        "version": 1,
        "width": width,
        "height": height,
        "image": "portrait.jpg",
        "matte": "matte.png",
        "mesh": "mesh.json",
        "face": {
            "eye_distance_px": round(face.eye_distance(), 1),
            "yaw": round(yaw, 1),
            "pitch": round(pitch, 1),
            "roll": round(roll, 1),
            "padded": padded,
        },
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }

    avatars_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{name}.building-", dir=avatars_dir))
    try:
        bgr = cv2.cvtColor(crop, cv2.COLOR_RGB2BGR)
        if not cv2.imwrite(str(work / "portrait.jpg"), bgr, [cv2.IMWRITE_JPEG_QUALITY, 90]):
            raise OSError(f"could not write {work / 'portrait.jpg'}")
        alpha = np.clip(matte * 255.0 + 0.5, 0, 255).astype(np.uint8)
        if not cv2.imwrite(str(work / "matte.png"), alpha, [cv2.IMWRITE_PNG_COMPRESSION, 9]):
            raise OSError(f"could not write {work / 'matte.png'}")
        (work / "mesh.json").write_text(json.dumps(mesh, separators=(",", ":")), encoding="utf-8")
        (work / "avatar.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.chmod(work, 0o755)
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{name}.old-", dir=avatars_dir))
            os.replace(final, old / name)
            os.replace(work, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(work, final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return PhotoAvatarInfo(name, final, str(meta["title"]), face.eye_distance(), yaw, pitch, roll)
