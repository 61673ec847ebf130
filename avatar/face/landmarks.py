"""Face landmarks from mediapipe's face mesh, plus its face detector and person matte.

``FaceTracker`` is an engine: load one per process and share it. It keeps no state from one
image to the next (the mesh runs in static-image mode), so one operator's face can never leak
into another session's results. Every method is thread-safe: mediapipe graphs are not
re-entrant, so each model is guarded by its own lock and calls on the same model serialise.
Calls block (a few ms each): run them off the event loop.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from avatar.face import topology

_INSTALL_HINT = "mediapipe is not installed: pip install 'mediapipe==0.10.21' (the last release with face-mesh models in the wheel)"


@dataclass(frozen=True, slots=True)
class FaceBox:
    """A detected face: pixel box (x, y, width, height) in the image given, and the detector's score."""

    x: float
    y: float
    width: float
    height: float
    score: float

    @property
    def center(self) -> tuple[float, float]:
        return (self.x + self.width / 2.0, self.y + self.height / 2.0)


@dataclass(frozen=True, slots=True)
class FaceLandmarks:
    """One face's mesh. ``points`` is float32 ``(478, 3)``: x and y in pixels of the image the
    landmarks were found in, z mediapipe's relative depth in the same pixel scale (smaller is
    nearer the camera). ``image_size`` is that image's (width, height)."""

    points: np.ndarray
    image_size: tuple[int, int]

    def xy(self, index: int | tuple[int, ...] | list[int]) -> np.ndarray:
        """Pixel positions of one landmark ``(2,)`` or several ``(n, 2)``."""
        if isinstance(index, int):
            return self.points[index, :2]
        return self.points[list(index), :2]

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) of the 468 face-mesh points."""
        p = self.points[: topology.NUM_LANDMARKS, :2]
        return (float(p[:, 0].min()), float(p[:, 1].min()), float(p[:, 0].max()), float(p[:, 1].max()))

    def eye_distance(self) -> float:
        """Distance between the outer eye corners in pixels: the face's scale unit."""
        d = self.xy(topology.LEFT_EYE_OUTER) - self.xy(topology.RIGHT_EYE_OUTER)
        return float(np.hypot(d[0], d[1]))


def _mediapipe() -> Any:
    try:
        import mediapipe as mp
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise RuntimeError(_INSTALL_HINT) from exc
    return mp


def _as_rgb(image: np.ndarray) -> np.ndarray:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 image (h, w, 3), got {image.dtype} {image.shape}")
    return np.ascontiguousarray(image)


class FaceTracker:
    """Mediapipe face mesh (478 landmarks with irises), face detector and selfie matte.

    Models load on first use. ``max_faces`` bounds how many faces ``landmarks`` returns.
    """

    def __init__(self, max_faces: int = 2, min_confidence: float = 0.5) -> None:
        self.max_faces = max_faces
        self.min_confidence = min_confidence
        self._mesh: Any = None
        self._detector: Any = None
        self._matte: Any = None
        self._mesh_lock = threading.Lock()
        self._detector_lock = threading.Lock()
        self._matte_lock = threading.Lock()

    def landmarks(self, image: np.ndarray) -> list[FaceLandmarks]:
        """Faces found by the face mesh's own (short-range) detector, largest first.

        Suits webcam frames and portraits where the face fills a good part of the image; for
        small faces in a large photo, find them with ``find_faces`` and use ``landmarks_in``.
        """
        rgb = _as_rgb(image)
        h, w = rgb.shape[:2]
        with self._mesh_lock:
            if self._mesh is None:
                self._mesh = _mediapipe().solutions.face_mesh.FaceMesh(
                    static_image_mode=True,
                    max_num_faces=self.max_faces,
                    refine_landmarks=True,
                    min_detection_confidence=self.min_confidence,
                )
            result = self._mesh.process(rgb)
        faces = []
        for face in result.multi_face_landmarks or []:
            pts = np.array([(p.x * w, p.y * h, p.z * w) for p in face.landmark], dtype=np.float32)
            faces.append(FaceLandmarks(pts, (w, h)))
        faces.sort(key=lambda f: -f.eye_distance())
        return faces

    def find_faces(self, image: np.ndarray) -> list[FaceBox]:
        """Faces anywhere in the image (full-range detector, faces up to ~5 m away), best first."""
        rgb = _as_rgb(image)
        h, w = rgb.shape[:2]
        with self._detector_lock:
            if self._detector is None:
                self._detector = _mediapipe().solutions.face_detection.FaceDetection(
                    model_selection=1, min_detection_confidence=self.min_confidence
                )
            result = self._detector.process(rgb)
        boxes = []
        for det in result.detections or []:
            rel = det.location_data.relative_bounding_box
            boxes.append(FaceBox(rel.xmin * w, rel.ymin * h, rel.width * w, rel.height * h, float(det.score[0])))
        boxes.sort(key=lambda b: -b.score)
        return boxes

    def landmarks_in(self, image: np.ndarray, box: FaceBox) -> FaceLandmarks | None:
        """The mesh of the face in ``box``: a square crop around it (twice its size) is meshed and
        the landmarks mapped back to ``image`` pixels. None when the mesh finds no face there."""
        rgb = _as_rgb(image)
        h, w = rgb.shape[:2]
        cx, cy = box.center
        side = round(2.0 * max(box.width, box.height))
        x0, y0 = round(cx - side / 2), round(cy - side / 2)
        crop: np.ndarray = np.zeros((side, side, 3), np.uint8)
        sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x0 + side, w), min(y0 + side, h)
        if sx1 <= sx0 or sy1 <= sy0:
            return None
        crop[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = rgb[sy0:sy1, sx0:sx1]
        scale = 1.0
        if side > 640:  # the mesh model sees 192 px anyway; a smaller crop is cheaper to prepare
            import cv2

            scale = side / 640.0
            crop = np.asarray(cv2.resize(crop, (640, 640), interpolation=cv2.INTER_AREA))
        faces = self.landmarks(crop)
        if not faces:
            return None
        pts = faces[0].points.copy()
        pts *= scale
        pts[:, 0] += x0
        pts[:, 1] += y0
        return FaceLandmarks(pts, (w, h))

    def person_matte(self, image: np.ndarray) -> np.ndarray:
        """Soft foreground (person) matte: float32 ``(h, w)`` in 0..1 (mediapipe selfie segmentation)."""
        rgb = _as_rgb(image)
        with self._matte_lock:
            if self._matte is None:
                self._matte = _mediapipe().solutions.selfie_segmentation.SelfieSegmentation(model_selection=0)
            result = self._matte.process(rgb)
        return np.clip(np.asarray(result.segmentation_mask, dtype=np.float32), 0.0, 1.0)

    def close(self) -> None:
        """Release the mediapipe graphs (they are recreated on next use)."""
        for lock, attr in (
            (self._mesh_lock, "_mesh"),
            (self._detector_lock, "_detector"),
            (self._matte_lock, "_matte"),
        ):
            with lock:
                model = getattr(self, attr)
                if model is not None:
                    model.close()
                    setattr(self, attr, None)
