"""The illustrated avatar: a flat, semi-realistic vector presenter drawn from a ``Rig``.

How a frame is made, and why it is cheap (the budget is about 2 ms per 512x512 frame on one core):

* At load, every layer of the rig is drawn once at ``supersample`` times the output resolution
  (float, premultiplied alpha, gradients, feathered shadows) and reduced with area averaging:
  that is the anti-aliasing. Each layer becomes a small premultiplied RGBA sprite.
* A *pose* (head yaw, pitch, roll and breath, quantised below what the eye can see) is the
  background plus every layer warped by its own transform: body layers rise with the breath,
  head layers roll about the rig's pivot and shift by their parallax depth. Poses are kept in
  a small LRU cache, because idle motion is slow.
* Eyes, brows and the mouth are transparent sprites drawn on demand at the supersampled scale
  and cached by their quantised parameters; the face beneath shows through around them, so
  they can slide over it as the head turns. Each frame copies the pose and blends the five small sprites with integer
  ``cv2`` arithmetic; layers marked ``above_features`` (front hair) are blended again over the
  feature area so they stay in front.

Left and right: ``eye_close_left`` is the avatar's own left eye, which the viewer sees on the
right, as for ``head_yaw``. ``gaze_x`` > 0 moves the irises towards the viewer's right and
``gaze_y`` > 0 moves them up.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Generic, TypeVar

import cv2
import numpy as np

from avatar.face_state import FaceState, MouthShape
from avatar.render.rig import (
    RGBA,
    EyeSpec,
    Gradient,
    Layer,
    MouthSpec,
    Paint,
    Rig,
    Shape,
    cubic_points,
    ellipse_points,
    mirror_points,
)

_SHIFT = 4  # fractional bits of the fixed-point coordinates given to cv2's polygon fill
_ONE = float(1 << _SHIFT)

# Quantisation steps: below a third of a pixel of movement at 512x512, so invisible, yet coarse
# enough for the caches to hit while the face idles.
_ANGLE_STEP = 0.2  # degrees
_BREATH_STEP = 1.0 / 10.0
_EYE_CLOSE_STEP = 1.0 / 24.0
_GAZE_STEP = 1.0 / 12.0
_SMILE_STEP = 1.0 / 16.0
_BROW_STEP = 1.0 / 24.0
_OPEN_STEP = 1.0 / 40.0
_MOUTH_STEP = 1.0 / 20.0

_SUBPIXEL = 4  # placements snap to quarter pixels, so resampled sprites can be reused
_MAX_ANGLE = 25.0  # degrees; the 2D approximation stops being believable beyond this
_EYE_STEPS = 24
_EYE_T = np.linspace(0.0, 1.0, _EYE_STEPS + 1)  # constant: parameters along a lid


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _Lru(Generic[K, V]):
    """A small least-recently-used cache with hit counters (the benchmark reports them)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self._items: OrderedDict[K, V] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get_or_make(self, key: K, make: Callable[[], V]) -> V:
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
            self.hits += 1
            return item
        self.misses += 1
        item = make()
        self._items[key] = item
        if len(self._items) > self.capacity:
            self._items.popitem(last=False)
        return item


@dataclass(frozen=True)
class _Sprite:
    """Premultiplied RGBA pixels whose top-left pixel sits at ``(x0, y0)`` in the rest pose."""

    rgba: np.ndarray
    x0: int
    y0: int


@dataclass(frozen=True)
class _LayerArt:
    layer: Layer
    sprite: _Sprite


@dataclass(frozen=True)
class _Pose:
    yaw: float
    pitch: float
    roll: float
    breath: float


@dataclass(frozen=True)
class _Placed:
    """A sprite resampled for one rotation and sub-pixel offset, ready to blend: premultiplied
    colour and ``keep = 255 - alpha``, with as many channels as the frame (3 or 4). ``x0, y0``
    is its top-left in output pixels before the whole-pixel shift it is blended with."""

    colour: np.ndarray
    keep: np.ndarray
    x0: int
    y0: int

    def rect(self, dx: int, dy: int) -> tuple[int, int, int, int]:
        h, w = self.colour.shape[:2]
        return (self.x0 + dx, self.y0 + dy, self.x0 + dx + w, self.y0 + dy + h)

    def blend(
        self,
        frame: np.ndarray,
        dx: int,
        dy: int,
        area: tuple[int, int, int, int] | None = None,
        origin: tuple[int, int] = (0, 0),
    ) -> None:
        """``frame = colour + frame * keep / 255`` where the sprite (shifted by ``dx, dy``)
        meets ``area`` (output pixels; default: all of ``frame``); ``frame``'s top-left pixel
        is output pixel ``origin``."""
        ox, oy = origin
        x0, y0, x1, y1 = self.rect(dx, dy)
        ax0, ay0, ax1, ay1 = area if area is not None else (ox, oy, ox + frame.shape[1], oy + frame.shape[0])
        cx0, cy0 = max(x0, ax0, ox), max(y0, ay0, oy)
        cx1, cy1 = min(x1, ax1, ox + frame.shape[1]), min(y1, ay1, oy + frame.shape[0])
        if cx1 <= cx0 or cy1 <= cy0:
            return
        src = (slice(cy0 - y0, cy1 - y0), slice(cx0 - x0, cx1 - x0))
        dst = frame[cy0 - oy : cy1 - oy, cx0 - ox : cx1 - ox]
        dst[:] = cv2.add(self.colour[src], cv2.multiply(dst, self.keep[src], scale=1.0 / 255.0))

    def covers(self, rect: tuple[int, int, int, int], dx: int, dy: int) -> bool:
        """Whether any of this sprite's pixels (shifted by ``dx, dy``) lie inside ``rect``."""
        x0, y0, x1, y1 = self.rect(dx, dy)
        cx0, cy0, cx1, cy1 = max(x0, rect[0]), max(y0, rect[1]), min(x1, rect[2]), min(y1, rect[3])
        if cx1 <= cx0 or cy1 <= cy0:
            return False
        return bool(self.keep[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0, 0].min() < 255)


@dataclass
class _BodyFrame:
    frame: np.ndarray  # background (or transparency) and the body layers
    placed: dict[int, tuple[_Placed, int, int]]  # layer index -> placement


@dataclass
class _PoseFrame:
    frame: np.ndarray  # everything but the features (RGB, or straight RGBA)
    under: np.ndarray | None  # the picture before the above-features layers, inside under_rect
    under_rect: tuple[int, int, int, int] | None
    front: list[tuple[_Placed, int, int]]  # above-features layers as placed


@dataclass(frozen=True)
class _Rect:
    x0: int
    y0: int
    w: int
    h: int

    @property
    def box(self) -> tuple[int, int, int, int]:
        return (self.x0, self.y0, self.x0 + self.w, self.y0 + self.h)


class _Placement:
    """Maps normalised rig coordinates to output pixels (continuous: pixel i covers [i, i+1))."""

    def __init__(self, width: int, height: int) -> None:
        self.scale = float(min(width, height))
        self.ox = (width - self.scale) / 2.0
        self.oy = float(height) - self.scale

    def px(self, pts: np.ndarray) -> np.ndarray:
        return pts * self.scale + np.array([self.ox, self.oy])

    def rect_around(self, x0: float, y0: float, x1: float, y1: float) -> _Rect:
        """The whole-pixel rectangle covering the normalised box."""
        a = self.px(np.array([[x0, y0], [x1, y1]]))
        ix0, iy0 = math.floor(a[0, 0]), math.floor(a[0, 1])
        ix1, iy1 = math.ceil(a[1, 0]), math.ceil(a[1, 1])
        return _Rect(ix0, iy0, max(1, ix1 - ix0), max(1, iy1 - iy0))


@dataclass(frozen=True, eq=False)
class IllustratedArt:
    """Everything about one rig at one output size that never changes: the background and the
    layers drawn once (supersampled), where the features live and their colours. Nothing in it
    is ever modified, so renderers (and threads) may share one; building it takes a fraction of
    a second, which is why the catalogue keeps it."""

    rig: Rig
    width: int
    height: int
    supersample: int
    place: _Placement
    background: np.ndarray
    layers: tuple[_LayerArt, ...]
    last_body: int  # index in ``layers`` of the last body-following layer, -1 if none
    eye_rects: tuple[_Rect, _Rect]  # viewer's left, viewer's right
    brow_rects: tuple[_Rect, _Rect]
    mouth_rect: _Rect
    eye_colors: tuple[_EyeColors, _EyeColors]
    mouth_colors: _MouthColors

    @classmethod
    def prepare(cls, rig: Rig, width: int = 512, height: int = 512, supersample: int = 4) -> IllustratedArt:
        """Draw the rig's static art for a ``width`` x ``height`` output (both even, 64 .. 2048).
        ``supersample`` is the most supersampling used; large outputs use less (at least 2x)
        so the transient drawing canvases stay near 100 MB. Raises ``ValueError`` for a bad size."""
        for label, value in (("width", width), ("height", height)):
            if value < 64 or value > 2048 or value % 2:
                raise ValueError(f"{label} must be an even number of pixels in 64 .. 2048, got {value}")
        if supersample not in (1, 2, 3, 4, 5, 6):
            raise ValueError(f"supersample must be 1 .. 6, got {supersample}")
        place = _Placement(width, height)
        supersample = min(supersample, max(2, int(3400 // place.scale)))
        margin = max(8, round(0.06 * place.scale))
        limit = _Rect(-margin, -margin, width + 2 * margin, height + 2 * margin)
        layers: list[_LayerArt] = []
        canvases: list[tuple[Layer, np.ndarray, _Rect]] = []
        for layer in rig.layers:
            drawn = _draw_layer(layer, place, supersample, limit)
            if drawn is None:
                continue
            sprite, canvas, rect = drawn
            sprite.rgba.flags.writeable = False
            layers.append(_LayerArt(layer, sprite))
            if layer.follows == "head" and not layer.above_features:
                canvases.append((layer, canvas, rect))
        body_layers = [i for i, art in enumerate(layers) if art.layer.follows == "body"]
        last_body = body_layers[-1] if body_layers else -1
        if any(art.layer.above_features and i < last_body for i, art in enumerate(layers)):
            raise ValueError(f"{rig.path}: layers: a body layer cannot be painted above the features")
        # Lids are painted in the colour of the skin around the eye unless the rig says otherwise.
        lids = [
            rig.eyes.lid
            if rig.eyes.lid is not None
            else _mean_color(canvases, _eye_core_rect(rig, place, side), supersample)
            for side in (1, -1)
        ]
        background = _render_background(rig, width, height, place)
        background.flags.writeable = False
        return cls(
            rig=rig,
            width=width,
            height=height,
            supersample=supersample,
            place=place,
            background=background,
            layers=tuple(layers),
            last_body=last_body,
            eye_rects=(_eye_rect(rig, place, 1), _eye_rect(rig, place, -1)),
            brow_rects=(_brow_rect(rig, place, 1), _brow_rect(rig, place, -1)),
            mouth_rect=_mouth_rect(rig, place),
            eye_colors=(_EyeColors(rig.eyes, lids[0]), _EyeColors(rig.eyes, lids[1])),
            mouth_colors=_MouthColors(rig.mouth),
        )


class IllustratedRenderer:
    """Renders one rig at one output size (both even). See the module docstring for the method.

    Instances cache sprites and poses: use one per stage, from one thread at a time. Pass
    ``art`` (from ``IllustratedArt.prepare`` for the same rig and size) to skip drawing it."""

    def __init__(
        self,
        rig: Rig,
        width: int = 512,
        height: int = 512,
        *,
        supersample: int = 4,
        art: IllustratedArt | None = None,
    ) -> None:
        if art is None:
            art = IllustratedArt.prepare(rig, width, height, supersample)
        elif art.rig is not rig or (art.width, art.height) != (width, height):
            raise ValueError(
                f"the prepared art is for {art.rig.name} at {art.width}x{art.height}, not {rig.name} at {width}x{height}"
            )
        self.rig = rig
        self.name = rig.name
        self.width = width
        self.height = height
        self._ss = art.supersample
        self._place = art.place
        self._background = art.background
        self._layers = art.layers
        self._last_body = art.last_body
        self._eye_rects = art.eye_rects
        self._brow_rects = art.brow_rects
        self._mouth_rect = art.mouth_rect
        self._eye_colors = art.eye_colors
        self._mouth_colors = art.mouth_colors

        frame_bytes = width * height * 4
        self._frames: _Lru[Hashable, np.ndarray] = _Lru(6)
        self._bodies: _Lru[tuple[bool, float], _BodyFrame] = _Lru(max(4, (48 << 20) // (frame_bytes * 2)))
        self._poses: _Lru[tuple[bool, _Pose], _PoseFrame] = _Lru(max(4, (64 << 20) // (frame_bytes * 2)))
        self._sprites: _Lru[Hashable, _Sprite] = _Lru(3000)
        # Resampled sprites: large layers and small features share it; about 40 MB at 512x512.
        self._placements: _Lru[Hashable, _Placed] = _Lru(1500)

    # ------------------------------------------------------------------ public API

    def render(self, state: FaceState) -> np.ndarray:
        """An RGB ``uint8`` frame ``(height, width, 3)``; a new array the caller may keep."""
        return self._render(state, rgba=False)

    def render_rgba(self, state: FaceState) -> np.ndarray:
        """The avatar alone: ``uint8`` ``(height, width, 4)`` with straight alpha, 0 away from the
        figure, 255 on it, anti-aliased at its edges."""
        return self._render(state, rgba=True)

    def feature_regions(self) -> dict[str, tuple[int, int, int, int]]:
        """Pixel boxes ``(x0, y0, x1, y1)`` (exclusive ends) the animated features may touch in
        the rest pose (no head motion, breath 0). Keys: ``mouth``, ``eye_left``, ``eye_right``,
        ``brow_left``, ``brow_right`` (left/right as the avatar's own, see the module docstring)."""
        return {
            "mouth": self._mouth_rect.box,
            "eye_right": self._eye_rects[0].box,
            "eye_left": self._eye_rects[1].box,
            "brow_right": self._brow_rects[0].box,
            "brow_left": self._brow_rects[1].box,
        }

    def cache_stats(self) -> dict[str, tuple[int, int]]:
        """``(hits, misses)`` per cache, for benchmarks."""
        return {
            name: (cache.hits, cache.misses)
            for name, cache in (
                ("frame", self._frames),
                ("body", self._bodies),
                ("pose", self._poses),
                ("sprite", self._sprites),
                ("placement", self._placements),
            )
        }

    # ------------------------------------------------------------------ per frame

    def _render(self, state: FaceState, *, rgba: bool) -> np.ndarray:
        pose = _Pose(
            _quantise(state.head_yaw, _ANGLE_STEP, -_MAX_ANGLE, _MAX_ANGLE),
            _quantise(state.head_pitch, _ANGLE_STEP, -_MAX_ANGLE, _MAX_ANGLE),
            _quantise(state.head_roll, _ANGLE_STEP, -_MAX_ANGLE, _MAX_ANGLE),
            _quantise(state.breath, _BREATH_STEP, 0.0, 1.0),
        )
        smile = _quantise(state.smile, _SMILE_STEP, 0.0, 1.0)
        gaze = (
            _quantise(state.gaze_x, _GAZE_STEP, -1.0, 1.0),
            _quantise(state.gaze_y, _GAZE_STEP, -1.0, 1.0),
        )
        brow = _quantise(state.brow, _BROW_STEP, -1.0, 1.0)
        closes = (
            _quantise(state.eye_close_right, _EYE_CLOSE_STEP, 0.0, 1.0),
            _quantise(state.eye_close_left, _EYE_CLOSE_STEP, 0.0, 1.0),
        )
        mouth_key = _mouth_key(state.mouth, smile)
        frame_key = (rgba, pose, smile, gaze, brow, closes, mouth_key)
        return self._frames.get_or_make(
            frame_key, lambda: self._compose(rgba, pose, smile, gaze, brow, closes, mouth_key)
        )

    def _compose(
        self,
        rgba: bool,
        pose: _Pose,
        smile: float,
        gaze: tuple[float, float],
        brow: float,
        closes: tuple[float, float],
        mouth_key: tuple[float, ...],
    ) -> np.ndarray:
        base = self._poses.get_or_make((rgba, pose), lambda: self._build_pose(pose, rgba))
        out = base.frame.copy()
        matrix = self._head_matrix(pose, self.rig.motion.feature_depth)
        features: list[tuple[Hashable, Callable[[], _Sprite]]] = []
        for index, side in ((0, 1), (1, -1)):
            c = closes[index]
            features.append(
                (
                    ("eye", index, c, gaze, smile),
                    partial(self._draw_eye, index, side, c, gaze[0], gaze[1], smile),
                )
            )
        for index, side in ((0, 1), (1, -1)):
            features.append((("brow", index, brow), partial(self._draw_brow, index, side, brow)))
        features.append((("mouth", mouth_key), partial(self._draw_mouth, mouth_key)))

        placed: list[tuple[_Placed, int, int]] = []
        for key, draw in features:
            sprite = self._sprites.get_or_make(key, draw)
            placed.append(self._position(key, sprite, matrix, pose.roll, rgba))
        # Where the front hair covers a feature, put back what lay under the hair, draw the
        # features, then the hair again: it stays in front without being blended twice.
        covered = [
            p.rect(dx, dy)
            for p, dx, dy in placed
            if any(f.covers(p.rect(dx, dy), fdx, fdy) for f, fdx, fdy in base.front)
        ]
        area = _clip_rect(_union(covered), self.width, self.height)
        if base.under is not None and base.under_rect is not None and area is not None:
            # Only inside the front layers' rectangle does the picture differ from "under".
            ux0, uy0, ux1, uy1 = base.under_rect
            x0, y0, x1, y1 = max(area[0], ux0), max(area[1], uy0), min(area[2], ux1), min(area[3], uy1)
            if x1 > x0 and y1 > y0:
                out[y0:y1, x0:x1] = base.under[y0 - uy0 : y1 - uy0, x0 - ux0 : x1 - ux0]
            for p, dx, dy in placed:
                p.blend(out, dx, dy)
            for f, fdx, fdy in base.front:
                f.blend(out, fdx, fdy, area)
        else:
            for p, dx, dy in placed:
                p.blend(out, dx, dy)
        out.flags.writeable = False  # frames are cached and may be handed out again
        return out

    def _position(
        self, key: Hashable, sprite: _Sprite, matrix: np.ndarray, roll: float, rgba: bool
    ) -> tuple[_Placed, int, int]:
        """The sprite resampled for ``matrix`` (whose rotation is ``roll``), cached by the
        rotation and the quarter-pixel remainder of its offset; the whole-pixel rest is returned
        as ``(dx, dy)`` and applied by slicing."""
        lin = matrix[:, :2]
        # Where sprite pixel (0, 0) lands (pixel-index coordinates, see _Placement).
        offset = lin @ np.array([sprite.x0 + 0.5, sprite.y0 + 0.5]) + matrix[:, 2] - 0.5
        steps = np.floor(offset * _SUBPIXEL + 0.5)
        whole = np.floor(steps / _SUBPIXEL)
        frac = (steps - whole * _SUBPIXEL) / _SUBPIXEL
        placed = self._placements.get_or_make(
            (key, rgba, roll, float(frac[0]), float(frac[1])), lambda: _resample(sprite, lin, frac, rgba)
        )
        return placed, int(whole[0]), int(whole[1])

    def _build_body(self, breath: float, rgba: bool) -> _BodyFrame:
        """The background and every body-following layer at one breath step."""
        frame = np.zeros((self.height, self.width, 4), np.uint8) if rgba else self._background.copy()
        matrix = self._body_matrix(breath)
        placed: dict[int, tuple[_Placed, int, int]] = {}
        for i, art in enumerate(self._layers):
            if art.layer.follows == "body":
                placed[i] = p = self._position(("layer", i), art.sprite, matrix, 0.0, rgba)
                p[0].blend(frame, p[1], p[2])
        return _BodyFrame(frame, placed)

    def _build_pose(self, pose: _Pose, rgba: bool) -> _PoseFrame:
        """Background, body and head layers for one pose: everything but the features.

        The background-and-body picture is cached per breath step; head layers painted before
        a body layer (hair falling behind the shoulders) are handled by repainting just their
        area from the bottom up."""
        body = self._bodies.get_or_make((rgba, pose.breath), lambda: self._build_body(pose.breath, rgba))
        frame = body.frame.copy()
        head: dict[int, tuple[_Placed, int, int]] = {}
        for i, art in enumerate(self._layers):
            if art.layer.follows == "head":
                matrix = self._head_matrix(pose, art.layer.depth)
                head[i] = self._position(("layer", i), art.sprite, matrix, pose.roll, rgba)
        behind = _clip_rect(
            _union([p.rect(dx, dy) for i, (p, dx, dy) in head.items() if i < self._last_body]),
            self.width,
            self.height,
        )
        if behind is not None:
            x0, y0, x1, y1 = behind
            region = (
                np.zeros((y1 - y0, x1 - x0, frame.shape[2]), np.uint8)
                if rgba
                else self._background[y0:y1, x0:x1].copy()
            )
            for i in range(self._last_body + 1):
                layer = body.placed.get(i) or head.get(i)
                if layer is not None:
                    layer[0].blend(region, layer[1], layer[2], behind, origin=(x0, y0))
            frame[y0:y1, x0:x1] = region
        front = [
            head[i]
            for i in range(self._last_body + 1, len(self._layers))
            if self._layers[i].layer.above_features
        ]
        under_rect = _clip_rect(_union([p.rect(dx, dy) for p, dx, dy in front]), self.width, self.height)
        under: np.ndarray | None = None
        for i in range(self._last_body + 1, len(self._layers)):
            p, dx, dy = head[i]
            if self._layers[i].layer.above_features and under is None and under_rect is not None:
                x0, y0, x1, y1 = under_rect
                under = frame[y0:y1, x0:x1].copy()
            p.blend(frame, dx, dy)
        if rgba:
            frame = _unpremultiply(frame)
            if under is not None:
                under = _unpremultiply(under)
        return _PoseFrame(frame, under, under_rect, front)

    def _body_matrix(self, breath: float) -> np.ndarray:
        rise = breath * self.rig.motion.breath * self._place.scale
        return np.array([[1.0, 0.0, 0.0], [0.0, 1.0, -rise]])

    def _head_matrix(self, pose: _Pose, depth: float) -> np.ndarray:
        motion = self.rig.motion
        scale = self._place.scale
        shift = depth * motion.parallax * scale
        tx, ty = shift * pose.yaw, -shift * pose.pitch
        pivot = self._place.px(np.array([motion.pivot]))[0]
        # cv2 angles are counter-clockwise on screen; FaceState roll is clockwise.
        rot = cv2.getRotationMatrix2D((float(pivot[0]), float(pivot[1])), -pose.roll, 1.0)
        lin = rot[:, :2]
        offset = lin @ np.array([tx, ty]) + rot[:, 2]
        offset[1] -= pose.breath * motion.breath * motion.head_breath * scale
        return np.hstack([lin, offset[:, None]])

    # ------------------------------------------------------------------ feature geometry

    def _eye_uv(self, side: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return _eye_uv(self.rig, side, u, v)

    def _to_patch(self, pts: np.ndarray, rect: _Rect) -> np.ndarray:
        """Normalised points to supersampled pixel-centre coordinates of the patch ``rect``."""
        px = self._place.px(pts) - np.array([rect.x0, rect.y0])
        out: np.ndarray = px * self._ss - 0.5
        return out

    # ------------------------------------------------------------------ feature drawing

    def _canvas(self, rect: _Rect) -> np.ndarray:
        """A transparent supersampled premultiplied RGBA canvas for a feature sprite."""
        return np.zeros((rect.h * self._ss, rect.w * self._ss, 4), np.uint8)

    def _finish(self, canvas: np.ndarray, rect: _Rect) -> _Sprite:
        """Reduce a supersampled premultiplied canvas to the sprite (area averaging = AA)."""
        return _Sprite(cv2.resize(canvas, (rect.w, rect.h), interpolation=cv2.INTER_AREA), rect.x0, rect.y0)

    def _draw_eye(
        self, index: int, side: int, close: float, gaze_x: float, gaze_y: float, smile: float
    ) -> _Sprite:
        """One eye: the white, iris and pupil inside the lids' opening, the eyelid (from the
        crease down to the lid's edge), lashes and crease. Transparent elsewhere, so the face
        beneath shows through wherever the head has moved it."""
        spec = self.rig.eyes
        rect = self._eye_rects[index]
        canvas = self._canvas(rect)
        n = _EYE_STEPS
        t = _EYE_T
        upper_open, lower = _eye_lids(spec, smile, n)
        # Closing: the upper lid slides down onto a line just above the lower lid.
        closed_line = lower * np.array([1.0, 0.75]) + np.array([0.0, -0.04])
        upper = upper_open + (closed_line - upper_open) * close
        # The crease meets the lid edge at both corners; the eyelid is the skin between them.
        crease = upper_open + np.stack(
            [np.zeros_like(t), -(0.30 + 0.12 * spec.upper) * np.sin(t * math.pi) ** 0.8], axis=1
        )

        # Eye-local (u, v) to supersampled patch pixels is a scale and a shift.
        k = spec.half_width * self._place.scale * self._ss
        scale = np.array([side * k, k])
        shift = self._to_patch(self._eye_uv(side, np.zeros(1), np.zeros(1)), rect)[0]

        def ss(pts_uv: np.ndarray) -> np.ndarray:
            out: np.ndarray = pts_uv * scale + shift
            return out

        colors = self._eye_colors[index]
        if close < 0.97:
            aperture_ss = ss(np.concatenate([upper, lower[::-1]]))
            x0, y0 = np.maximum(np.floor(aperture_ss.min(axis=0)).astype(int) - 2, 0)
            x1 = min(canvas.shape[1], math.ceil(aperture_ss[:, 0].max()) + 3)
            y1 = min(canvas.shape[0], math.ceil(aperture_ss[:, 1].max()) + 3)
            if x1 > x0 and y1 > y0:
                origin = np.array([x0, y0], dtype=float)
                inner = np.empty((y1 - y0, x1 - x0, 4), np.uint8)
                inner[:] = colors.sclera
                # The lid's shadow on the white: a band under the upper lid.
                band = ss(np.concatenate([upper, (upper + _v(0.0, 0.32))[::-1]])) - origin
                _fill(inner, band, colors.sclera_shadow)
                r = spec.iris_radius
                iu = side * gaze_x * spec.gaze_travel[0]
                iv = -gaze_y * spec.gaze_travel[1]
                unit = self._place.scale * spec.half_width * self._ss  # one half-width in SS px
                centre = ss(np.array([[iu, iv]]))[0] - origin
                _circle(inner, centre, r * unit, colors.iris_rim)
                _circle(inner, centre, 0.86 * r * unit, colors.iris)
                _circle(inner, centre + _v(0.0, 0.26 * r * unit), 0.5 * r * unit, colors.iris_light)
                _circle(inner, centre, spec.pupil * r * unit, colors.pupil)
                # Iris and pupil share the lid's shadow.
                shade: np.ndarray = np.zeros(inner.shape[:2], np.uint8)
                _fill(shade, band, (255,))
                shade = cv2.bitwise_and(shade, _circle_mask(inner.shape[:2], centre, r * unit))
                darker = (inner * np.array([0.72, 0.72, 0.72, 1.0], np.float32)).astype(np.uint8)
                cv2.copyTo(darker, shade, inner)
                # Catch-lights sit where the studio light is, whatever the gaze.
                _circle(inner, centre + np.array([-0.34, -0.36]) * r * unit, 0.21 * r * unit, colors.glint)
                _circle(inner, centre + np.array([0.34, 0.30]) * r * unit, 0.08 * r * unit, colors.glint)
                mask = np.zeros(inner.shape[:2], np.uint8)
                _fill(mask, aperture_ss - origin, (255,))
                cv2.copyTo(inner, mask, canvas[y0:y1, x0:x1])
        _fill(canvas, ss(np.concatenate([crease, upper[::-1]])), colors.lid)
        # The crease line hides the lid's upper edge; it softens as the lid stretches shut.
        crease_w = np.sin(t * math.pi) ** 1.2 * 0.06 * (1.0 - 0.75 * close)
        _fill(canvas, ss(_band(crease, crease_w, crease_w * 0.6)), colors.crease)
        # Lower lash line, on the outer two thirds.
        m = n // 3 * 2
        lw = np.sin(np.linspace(0.25, math.pi - 0.1, m)) * 0.05
        _fill(canvas, ss(_band(lower[:m] + _v(0.0, 0.02), lw * 0.2, lw)), colors.lower_lash)
        # Upper lash line along the lid's edge, heavier towards the outer corner, optional wing.
        width = (
            spec.lash_width
            * (1.0 - 0.45 * t)
            * (0.55 + 0.45 * np.sin(np.clip(t * 1.3, 0, 1) * math.pi / 2 + 0.2))
        )
        _fill(canvas, ss(_band(upper, width, width * 0.22)), colors.lash)
        if spec.flick > 0.0:
            tip = np.array([-1.0 - 0.42 * spec.flick, upper[0, 1] - 0.34 * spec.flick])
            start = upper[3] + [0.0, -width[3]]
            wing = np.concatenate(
                [
                    upper[:1],
                    cubic_points(start, (start + tip) / 2 + _v(0.0, -0.02), tip, tip, 6),
                    [upper[0] + _v(0.02, 0.04)],
                ]
            )
            _fill(canvas, ss(wing), colors.lash)
        return self._finish(canvas, rect)

    def _draw_brow(self, index: int, side: int, brow: float) -> _Sprite:
        spec = self.rig.brows
        rect = self._brow_rects[index]
        p = np.array(spec.points)
        lift = spec.lift
        if brow >= 0:
            # Raised: the whole brow lifts, the inner end a little more (interest, surprise).
            p = p + np.array([[0.0, -1.25], [0.0, -1.0], [0.0, -0.7]]) * brow * lift
        else:
            # Frown: inner ends drop and draw together; the outer end barely moves.
            k = -brow * lift
            p = p + np.array([[0.35, 1.1], [0.1, 0.45], [0.0, 0.15]]) * k
        ctrl = 2.0 * p[1] - (p[0] + p[2]) / 2.0
        line = cubic_points(p[0], p[0] + (ctrl - p[0]) * 2 / 3, p[2] + (ctrl - p[2]) * 2 / 3, p[2], 24)
        t = np.linspace(0, 1, len(line))
        th = np.array(spec.thickness)
        half = (th[0] * (1 - t) * (1 - 2 * t) + th[1] * 4 * t * (1 - t) + th[2] * t * (2 * t - 1)) / 2
        half = np.maximum(half, 0.0006)
        d = np.gradient(line, axis=0)
        normal = np.stack([d[:, 1], -d[:, 0]], axis=1)
        normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-9)
        top = line + normal * half[:, None]
        bottom = line - normal * half[:, None]
        # A rounded inner end (hair grows from a soft edge there).
        cap = [line[0] + (top[0] - line[0]) * math.cos(a) - np.array([normal[0, 1], -normal[0, 0]]) * half[0] * math.sin(a) * 0.8
               for a in np.linspace(0, math.pi, 7)]  # fmt: skip
        outline = np.concatenate([top, bottom[::-1], np.array(cap)[::-1]])
        if side == -1:
            outline = mirror_points(outline)
        ss = self._ss
        mask = np.zeros((rect.h * ss, rect.w * ss), np.uint8)
        cv2.fillPoly(mask, [_fixed(self._to_patch(outline, rect))], (255,), cv2.LINE_8, _SHIFT)
        cover = cv2.resize(mask, (rect.w, rect.h), interpolation=cv2.INTER_AREA)
        # Brows are hair: a slightly soft edge reads better than a razor-cut one.
        cover = cv2.GaussianBlur(cover, (0, 0), max(0.35, 0.0012 * self._place.scale))
        premul = np.array(_premul(spec.color), np.float32) / 255.0
        pixels = np.clip(cover[:, :, None].astype(np.float32) * premul + 0.5, 0, 255).astype(np.uint8)
        return _Sprite(pixels, rect.x0, rect.y0)

    def _draw_mouth(self, key: tuple[float, ...]) -> _Sprite:
        """The lips and what they let show; transparent around them."""
        spec = self.rig.mouth
        rect = self._mouth_rect
        canvas = self._canvas(rect)
        geo = _mouth_geometry(spec, *key)
        centre = np.array(spec.center)

        shift = self._to_patch(centre[None, :], rect)[0]
        k = self._place.scale * self._ss

        def ss(pts: np.ndarray) -> np.ndarray:
            out: np.ndarray = pts * k + shift
            return out

        c = self._mouth_colors
        # Soft shadows first: they are translucent, and later shapes simply cover them.
        _fill(canvas, ss(geo.chin_shadow), c.chin_shadow)
        for corner in geo.corners:
            _fill(canvas, ss(corner), c.corner)
        if geo.interior is not None:
            region = ss(geo.interior)
            x0, y0 = np.maximum(np.floor(region.min(axis=0)).astype(int) - 2, 0)
            x1 = min(canvas.shape[1], math.ceil(region[:, 0].max()) + 3)
            y1 = min(canvas.shape[0], math.ceil(region[:, 1].max()) + 3)
            if x1 > x0 and y1 > y0:
                origin = np.array([x0, y0], dtype=float)
                inner = np.empty((y1 - y0, x1 - x0, 4), np.uint8)
                inner[:] = c.interior
                _fill(inner, ss(geo.lower_teeth) - origin, c.teeth_shadow)
                _fill(inner, ss(geo.tongue) - origin, c.tongue)
                _fill(inner, ss(geo.upper_teeth) - origin, c.teeth)
                _fill(inner, ss(geo.upper_teeth_shadow) - origin, c.teeth_shadow)
                mask = np.zeros(inner.shape[:2], np.uint8)
                _fill(mask, region - origin, (255,))
                cv2.copyTo(inner, mask, canvas[y0:y1, x0:x1])
        _fill(canvas, ss(geo.lower_lip), c.lower_lip)
        _fill(canvas, ss(geo.lip_highlight), c.lip_highlight)
        if geo.tucked_teeth is not None:
            _fill(canvas, ss(geo.tucked_teeth), c.teeth)
        _fill(canvas, ss(geo.upper_lip), c.upper_lip)
        if geo.lip_line is not None:
            _fill(canvas, ss(geo.lip_line), c.lip_line)
        return self._finish(canvas, rect)


# ---------------------------------------------------------------------------------------------
# Where the features live (rest pose)


def _eye_uv(rig: Rig, side: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Eye-local coordinates (u along the eye towards the nose, v down, in half-widths) to
    normalised rig coordinates, for the eye on the viewer's left (side 1) or right (-1)."""
    spec = rig.eyes
    cx = spec.center[0] if side == 1 else 1.0 - spec.center[0]
    a = spec.half_width
    return np.stack([cx + side * u * a, spec.center[1] + v * a], axis=-1)


def _box(place: _Placement, pts: np.ndarray, pad: float = 0.0) -> _Rect:
    return place.rect_around(
        float(pts[:, 0].min()) - pad,
        float(pts[:, 1].min()) - pad,
        float(pts[:, 0].max()) + pad,
        float(pts[:, 1].max()) + pad,
    )


def _eye_rect(rig: Rig, place: _Placement, side: int) -> _Rect:
    """Everything an eye sprite may draw: lashes, wing, crease, lower lash line."""
    spec = rig.eyes
    u_lo = -1.25 - 0.5 * spec.flick
    v_lo = -(spec.upper * 1.05 + 0.85)
    v_hi = spec.lower + 0.75
    return _box(place, _eye_uv(rig, side, np.array([u_lo, 1.35]), np.array([v_lo, v_hi])))


def _eye_core_rect(rig: Rig, place: _Placement, side: int) -> _Rect:
    """The open eye's own area (the lid's colour is sampled there)."""
    return _box(place, _eye_uv(rig, side, np.array([-0.8, 0.8]), np.array([-0.35, 0.3])))


def _brow_rect(rig: Rig, place: _Placement, side: int) -> _Rect:
    spec = rig.brows
    pts = np.array(spec.points)
    if side == -1:
        pts = mirror_points(pts)
    return _box(place, pts, max(spec.thickness) + spec.lift * 1.4 + 0.006)


def _mouth_rect(rig: Rig, place: _Placement) -> _Rect:
    """Everything the mouth sprite may draw, at its widest and most open."""
    spec = rig.mouth
    mx, my = spec.center
    half = spec.half_width * 1.45 + 0.012
    top = spec.upper_lip * 2.0 + spec.max_open * 0.35 + 0.012
    bottom = spec.lower_lip * 2.15 + spec.max_open * 0.85 + 0.014
    return place.rect_around(mx - half, my - top, mx + half, my + bottom)


# ---------------------------------------------------------------------------------------------
# Feature geometry (pure functions of the rig and the quantised parameters)


def _eye_lids(spec: EyeSpec, smile: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Upper (open) and lower lid lines in eye-local coordinates, outer corner first."""
    outer = np.array([-1.0, -spec.tilt])
    inner = np.array([1.0, 0.0])
    up = spec.upper / 0.75
    upper = cubic_points(outer, [-0.55, -up - spec.tilt * 0.4], [0.38, -up], inner, n)
    # A smile pushes the cheek up into the lower lid.
    low = spec.lower / 0.75 * (1.0 - 0.3 * smile)
    lower = cubic_points(outer, [-0.5, low - spec.tilt * 0.3], [0.45, low], inner, n)
    return upper, lower


@dataclass(frozen=True)
class _MouthGeometry:
    upper_lip: np.ndarray
    lower_lip: np.ndarray
    lip_highlight: np.ndarray
    interior: np.ndarray | None
    upper_teeth: np.ndarray
    upper_teeth_shadow: np.ndarray
    lower_teeth: np.ndarray
    tongue: np.ndarray
    tucked_teeth: np.ndarray | None
    lip_line: np.ndarray | None
    corners: list[np.ndarray]
    chin_shadow: np.ndarray


def _arc(left: np.ndarray, right: np.ndarray, depth: float, roundness: float, n: int = 20) -> np.ndarray:
    """A cubic from ``left`` to ``right`` whose middle sits ``depth`` below the chord (negative:
    above); ``roundness`` 0 gives pointed ends, 1 a near half-ellipse."""
    k = 0.42 + 0.58 * roundness
    mid_y = (left[1] + right[1]) / 2.0
    cy = (mid_y + depth - 0.25 * mid_y) / 0.75
    span = (right[0] - left[0]) / 2.0
    cx = (left[0] + right[0]) / 2.0
    return cubic_points(left, [cx - span * k, cy], [cx + span * k, cy], right, n)


def _mouth_geometry(
    spec: MouthSpec,
    open_: float,
    width: float,
    round_: float,
    press: float,
    tuck: float,
    tongue: float,
    teeth: float,
    smile: float,
) -> _MouthGeometry:
    """Outlines of the mouth's parts, in normalised units relative to the mouth centre."""
    w0, u0, l0 = spec.half_width, spec.upper_lip, spec.lower_lip
    hw = w0 * float(
        np.clip(1.0 + 0.17 * width - 0.30 * round_ + 0.07 * smile - 0.04 * tuck + 0.03 * press, 0.5, 1.3)
    )
    gap = spec.max_open * open_ * (1.0 - 0.95 * press)
    up = 0.30 * gap + 0.004 * teeth * open_  # upper lip lift
    down = 0.70 * gap * (1.0 - 0.8 * tuck)  # jaw drop
    corner_y = -0.45 * w0 * smile + 0.08 * gap
    rest = 0.06 * u0  # the upper lip's tubercle dips the closed line a little
    inner_hw = hw * (0.94 - 0.42 * round_ - 0.08 * open_)
    lip_u = u0 * (1.0 + 0.35 * round_) * (1.0 - 0.45 * press)
    lip_l = l0 * (1.0 + 0.30 * round_) * (1.0 - 0.40 * press) * (1.0 - 0.40 * tuck)

    # "FF": the upper lip lifts a little and the lower lip rolls up under the upper teeth.
    y_upper_in = rest - up - tuck * 0.10 * w0
    y_lower_in = rest + down + tuck * 0.02 * w0
    left, right = np.array([-hw, corner_y]), np.array([hw, corner_y])
    il, ir = np.array([-inner_hw, corner_y + 0.1 * gap]), np.array([inner_hw, corner_y + 0.1 * gap])
    # A wide-open mouth rounds its corners too, not only a pursed one.
    inner_round = max(round_, 0.55 * open_)
    upper_inner = _arc(il, ir, y_upper_in - (corner_y + 0.1 * gap), inner_round * 0.8)
    lower_inner = _arc(il, ir, y_lower_in - (corner_y + 0.1 * gap), inner_round)

    # Upper lip: corners up to the two peaks of the Cupid's bow, a dip in the middle.
    top = rest - up - lip_u
    peak_x = 0.30 * hw * (1.0 - 0.3 * round_)
    half_left = np.concatenate(
        [
            cubic_points(left, [-hw * 0.82, corner_y - lip_u * 0.25], [-hw * 0.52, top], [-peak_x, top], 14),
            cubic_points(
                [-peak_x, top],
                [-peak_x * 0.55, top],
                [-peak_x * 0.2, top + lip_u * 0.2],
                [0.0, top + lip_u * 0.2],
                8,
            )[1:],
        ]
    )
    upper_outer = np.concatenate([half_left, (half_left * [-1.0, 1.0])[::-1][1:]])
    upper_lip = np.concatenate([upper_outer, upper_inner[::-1] + _v(0.0, 0.0008)])

    bottom = rest + down + lip_l
    lower_outer = _arc(left, right, bottom - corner_y, 0.55 + 0.45 * round_, 24)
    lower_lip = np.concatenate([lower_outer, lower_inner[::-1] - _v(0.0, 0.0008)])
    hl_y = (y_lower_in + bottom) / 2.0 + 0.1 * lip_l
    lip_highlight = ellipse_points(0.12 * hw, hl_y, 0.28 * hw, 0.16 * lip_l, -4.0)

    interior: np.ndarray | None = None
    if y_lower_in - y_upper_in > 0.0006:
        interior = np.concatenate([upper_inner, lower_inner[::-1]])
    # Upper teeth hang from the skull: a wide arch whose lower edge shows more with `teeth`.
    show_upper = (0.45 * gap + 0.25 * u0) * (0.35 + 0.65 * teeth) + tuck * 0.35 * u0
    t_edge = y_upper_in + show_upper
    tw = 0.66 * w0
    upper_teeth = _arc(np.array([-tw, t_edge - 0.5 * u0]), np.array([tw, t_edge - 0.5 * u0]), 0.5 * u0, 0.9)
    upper_teeth = np.concatenate([upper_teeth, [[tw, t_edge - 3 * u0], [-tw, t_edge - 3 * u0]]])
    upper_teeth_shadow = np.array([[-tw, y_upper_in - u0], [tw, y_upper_in - u0], [tw, y_upper_in + 0.18 * show_upper + 0.0008],
                                   [-tw, y_upper_in + 0.18 * show_upper + 0.0008]])  # fmt: skip
    show_lower = (0.12 * gap + 0.2 * u0) * teeth * (1.0 - tuck)
    b_edge = y_lower_in - show_lower
    lower_teeth = _arc(
        np.array([-0.58 * w0, b_edge + 0.4 * u0]), np.array([0.58 * w0, b_edge + 0.4 * u0]), -0.4 * u0, 0.9
    )
    lower_teeth = np.concatenate([lower_teeth, [[0.58 * w0, b_edge + 3 * u0], [-0.58 * w0, b_edge + 3 * u0]]])
    # The tongue rests low; raised it reaches up behind the upper teeth ("TH", "DD", "nn").
    tongue_top = (y_lower_in - 0.22 * gap) * (1.0 - tongue) + (t_edge - 0.1 * u0) * tongue
    tongue_bottom = y_lower_in + lip_l
    tongue_outline = ellipse_points(0.0, (tongue_top + tongue_bottom) / 2.0, 0.72 * inner_hw + 0.002,
                                    max(1e-4, (tongue_bottom - tongue_top) / 2.0))  # fmt: skip

    tucked: np.ndarray | None = None
    if tuck > 0.05:
        tucked_edge = rest + 0.08 * w0 * tuck  # the teeth's edge rests on the lower lip
        tucked = _arc(
            _v(-0.55 * w0, tucked_edge - 0.4 * u0), _v(0.55 * w0, tucked_edge - 0.4 * u0), 0.4 * u0, 0.9
        )
        tucked = np.concatenate(
            [tucked, [[0.55 * w0, y_upper_in - 0.5 * u0], [-0.55 * w0, y_upper_in - 0.5 * u0]]]
        )

    # The dark line where the lips meet: strongest when closed, heavier when pressed.
    closeness = max(0.0, 1.0 - (y_lower_in - y_upper_in) / (0.35 * u0))
    lip_line: np.ndarray | None = None
    thick = 0.0030 * w0 / 0.05 * (0.55 + 0.45 * closeness + 0.6 * press)
    if closeness > 0.0 or interior is None:
        mid = (upper_inner + lower_inner) / 2.0
        taper = np.sin(np.linspace(0.0, math.pi, len(mid))) ** 0.5 * 0.7 + 0.3
        lip_line = np.concatenate(
            [mid - _v(0.0, thick * 0.5) * taper[:, None], (mid + _v(0.0, thick * 0.5) * taper[:, None])[::-1]]
        )
    else:
        lip_line = None

    corners = []
    for s in (-1.0, 1.0):
        c = np.array([s * hw, corner_y])
        size = 0.18 * w0 * (0.6 + 0.8 * smile)
        tip = c + _v(s * size * 0.55, -size * (0.2 + 0.6 * smile))
        crease = cubic_points(c + _v(0, -0.001), c + _v(s * size * 0.3, -0.0015), tip, tip, 8)
        back = cubic_points(tip, tip, c + _v(s * size * 0.3, 0.0015), c + _v(0, 0.0012), 8)
        corners.append(np.concatenate([crease, back[1:]]))

    sh_top = bottom + 0.25 * lip_l
    chin_shadow = np.concatenate(
        [
            _arc(
                np.array([-0.55 * hw, bottom - 0.3 * lip_l]),
                np.array([0.55 * hw, bottom - 0.3 * lip_l]),
                sh_top - bottom + 0.3 * lip_l,
                0.8,
            ),
            _arc(
                np.array([-0.55 * hw, bottom - 0.3 * lip_l]),
                np.array([0.55 * hw, bottom - 0.3 * lip_l]),
                sh_top - bottom + 0.3 * lip_l + 0.55 * l0,
                0.9,
            )[::-1],
        ]
    )
    return _MouthGeometry(
        upper_lip=upper_lip,
        lower_lip=lower_lip,
        lip_highlight=lip_highlight,
        interior=interior,
        upper_teeth=upper_teeth,
        upper_teeth_shadow=upper_teeth_shadow,
        lower_teeth=lower_teeth,
        tongue=tongue_outline,
        tucked_teeth=tucked,
        lip_line=lip_line,
        corners=corners,
        chin_shadow=chin_shadow,
    )


def _band(line: np.ndarray, out: np.ndarray, inward: np.ndarray) -> np.ndarray:
    """A filled band along ``line`` (points, y down), ``out`` thick on its upper side and
    ``inward`` on its lower side (per point)."""
    d = np.empty_like(line)
    d[1:-1] = line[2:] - line[:-2]
    d[0] = line[1] - line[0]
    d[-1] = line[-1] - line[-2]
    normal = d[:, ::-1] * [1.0, -1.0]
    normal /= np.maximum(np.hypot(normal[:, 0], normal[:, 1]), 1e-9)[:, None]
    normal *= np.where(normal[:, 1:2] > 0, -1.0, 1.0)  # point up (negative y)
    top = line + normal * np.asarray(out)[:, None]
    bottom = line - normal * np.asarray(inward)[:, None]
    return np.concatenate([top, bottom[::-1]])


def _mouth_key(mouth: MouthShape, smile: float) -> tuple[float, ...]:
    return (
        _quantise(mouth.open, _OPEN_STEP, 0.0, 1.0),
        _quantise(mouth.width, _MOUTH_STEP, -1.0, 1.0),
        _quantise(mouth.round, _MOUTH_STEP, 0.0, 1.0),
        _quantise(mouth.press, _MOUTH_STEP, 0.0, 1.0),
        _quantise(mouth.tuck, _MOUTH_STEP, 0.0, 1.0),
        _quantise(mouth.tongue, _MOUTH_STEP, 0.0, 1.0),
        _quantise(mouth.teeth, _MOUTH_STEP, 0.0, 1.0),
        smile,
    )


Premul = tuple[int, int, int, int]


class _EyeColors:
    def __init__(self, spec: EyeSpec, lid: RGBA) -> None:
        self.sclera = _premul(spec.sclera)
        self.sclera_shadow = _premul(spec.sclera_shadow)
        self.iris = _premul(spec.iris)
        self.iris_rim = _premul(spec.iris_rim)
        self.iris_light = _premul(spec.iris_light)
        self.pupil = _premul(spec.pupil_color)
        self.glint = _premul((0.99, 0.99, 0.98, 1.0))
        self.lash = _premul(spec.lash)
        self.lower_lash = _premul(spec.lower_lash)
        self.crease = _premul(spec.crease)
        self.lid = _premul(lid)


class _MouthColors:
    def __init__(self, spec: MouthSpec) -> None:
        self.upper_lip = _premul(spec.upper_lip_color)
        self.lower_lip = _premul(spec.lower_lip_color)
        self.lip_highlight = _premul(_flatten(spec.lip_highlight, spec.lower_lip_color))
        self.lip_line = _premul(spec.lip_line)
        self.interior = _premul(spec.interior)
        self.teeth = _premul(spec.teeth)
        self.teeth_shadow = _premul(spec.teeth_shadow)
        self.tongue = _premul(spec.tongue)
        shadow = spec.skin_shadow
        self.chin_shadow = _premul((shadow[0], shadow[1], shadow[2], shadow[3] * 0.22))
        self.corner = _premul((shadow[0], shadow[1], shadow[2], shadow[3] * 0.8))


def _premul(color: RGBA) -> Premul:
    """0..255 premultiplied RGBA for drawing on a premultiplied canvas with cv2."""
    a = color[3]
    return (round(color[0] * a * 255), round(color[1] * a * 255), round(color[2] * a * 255), round(a * 255))


def _flatten(color: RGBA, under: RGBA) -> RGBA:
    """``color`` over an opaque ``under``, as an opaque colour."""
    a = color[3]
    return (
        color[0] * a + under[0] * (1 - a),
        color[1] * a + under[1] * (1 - a),
        color[2] * a + under[2] * (1 - a),
        1.0,
    )


# ---------------------------------------------------------------------------------------------
# Static art, drawn once


def _render_background(rig: Rig, width: int, height: int, place: _Placement) -> np.ndarray:
    bg = rig.background
    y = (np.arange(height, dtype=np.float32) + 0.5) / height
    top, bottom = np.array(bg.top[:3], np.float32), np.array(bg.bottom[:3], np.float32)
    img = np.broadcast_to((top + (bottom - top) * y[:, None])[:, None, :], (height, width, 3)).copy()
    if bg.glow is not None:
        g = bg.glow
        xs = ((np.arange(width, dtype=np.float32) + 0.5) - place.ox) / place.scale
        ys = ((np.arange(height, dtype=np.float32) + 0.5) - place.oy) / place.scale
        d2 = ((xs[None, :] - g.center[0]) ** 2 + (ys[:, None] - g.center[1]) ** 2) / (g.radius**2)
        weight = (np.exp(-2.5 * d2) * g.strength * g.color[3])[:, :, None]
        img = img + (np.array(g.color[:3], np.float32) - img) * weight
    # A faint ordered dither keeps the slow gradient free of banding after 8-bit rounding.
    bayer = (
        np.array([[0, 8, 2, 10], [12, 4, 14, 6], [3, 11, 1, 9], [15, 7, 13, 5]], np.float32) + 0.5
    ) / 16.0 - 0.5
    dither = np.tile(bayer, (height // 4 + 1, width // 4 + 1))[:height, :width, None]
    out: np.ndarray = np.clip(img * 255.0 + dither, 0, 255).astype(np.uint8)
    return out


def _draw_layer(
    layer: Layer, place: _Placement, ss: int, limit: _Rect
) -> tuple[_Sprite, np.ndarray, _Rect] | None:
    """Draw a layer supersampled; return its reduced sprite, the supersampled premultiplied
    float canvas and the canvas rectangle (rest-pose pixels)."""
    named: dict[str, tuple[float, float, float, float]] = {}
    boxes = []
    for shape in layer.shapes:
        box = shape.bounds()
        if shape.clip is not None:
            # A clipped shape never paints outside the shape it is clipped to.
            c = named[shape.clip]
            box = (max(box[0], c[0]), max(box[1], c[1]), min(box[2], c[2]), min(box[3], c[3]))
        if shape.name is not None:
            named[shape.name] = box
        if box[2] > box[0] and box[3] > box[1]:
            boxes.append(box)
    if not boxes:
        return None
    x0 = min(b[0] for b in boxes)
    y0 = min(b[1] for b in boxes)
    x1 = max(b[2] for b in boxes)
    y1 = max(b[3] for b in boxes)
    rect = place.rect_around(x0, y0, x1, y1)
    rx0, ry0 = max(rect.x0 - 1, limit.x0), max(rect.y0 - 1, limit.y0)
    rx1 = min(rect.x0 + rect.w + 1, limit.x0 + limit.w)
    ry1 = min(rect.y0 + rect.h + 1, limit.y0 + limit.h)
    if rx1 <= rx0 or ry1 <= ry0:
        return None
    rect = _Rect(rx0, ry0, rx1 - rx0, ry1 - ry0)
    canvas = np.zeros((rect.h * ss, rect.w * ss, 4), np.float32)
    clip_names = {shape.clip for shape in layer.shapes if shape.clip}
    coverages: dict[str, np.ndarray] = {}
    for shape in layer.shapes:
        copies: list[tuple[tuple[np.ndarray, ...], Paint | None, RGBA | None]] = [
            (shape.paths, shape.fill, shape.stroke.color if shape.stroke else None)
        ]
        if shape.mirror:
            fill = shape.fill.mirrored() if isinstance(shape.fill, Gradient) else shape.fill
            copies.append((tuple(mirror_points(p) for p in shape.paths), fill, copies[0][2]))
        keep = shape.name is not None and shape.name in clip_names
        kept = np.zeros(canvas.shape[:2], np.float32) if keep else None
        for paths, fill, stroke_color in copies:
            pts = [(place.px(p) - _v(rect.x0, rect.y0)) * ss - 0.5 for p in paths]
            if fill is not None:
                cover = _shape_coverage(
                    shape, pts, (canvas.shape[0], canvas.shape[1]), place.scale * ss, stroke=False
                )
                if cover is not None:
                    _paint(canvas, cover, shape, fill, coverages, place, rect, ss)
                    if kept is not None:
                        box, cov = cover
                        np.maximum(
                            kept[box[1] : box[3], box[0] : box[2]],
                            cov,
                            out=kept[box[1] : box[3], box[0] : box[2]],
                        )
            if stroke_color is not None:
                cover = _shape_coverage(
                    shape, pts, (canvas.shape[0], canvas.shape[1]), place.scale * ss, stroke=True
                )
                if cover is not None:
                    _paint(canvas, cover, shape, stroke_color, coverages, place, rect, ss)
                    if kept is not None and fill is None:
                        box, cov = cover
                        np.maximum(
                            kept[box[1] : box[3], box[0] : box[2]],
                            cov,
                            out=kept[box[1] : box[3], box[0] : box[2]],
                        )
        if kept is not None and shape.name is not None:
            coverages[shape.name] = kept
    small = cv2.resize(canvas, (rect.w, rect.h), interpolation=cv2.INTER_AREA)
    pixels = np.clip(small * 255.0 + 0.5, 0, 255).astype(np.uint8)
    # Keep only the part with something in it: every frame pays for each pixel kept.
    rows = np.flatnonzero(pixels[:, :, 3].any(axis=1))
    cols = np.flatnonzero(pixels[:, :, 3].any(axis=0))
    if len(rows) == 0:
        return None
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    sprite = _Sprite(np.ascontiguousarray(pixels[r0:r1, c0:c1]), rect.x0 + int(c0), rect.y0 + int(r0))
    return sprite, canvas, rect


def _shape_coverage(
    shape: Shape, pts: list[np.ndarray], size: tuple[int, int], unit: float, *, stroke: bool
) -> tuple[tuple[int, int, int, int], np.ndarray] | None:
    """Coverage (0..1 float) of a shape's fill or stroke over its own bounding box."""
    stroke_px = shape.stroke.width * unit if (stroke and shape.stroke) else 0.0
    sigma = shape.blur * unit
    pad = math.ceil(3 * sigma + stroke_px + 2)
    allp = np.concatenate(pts)
    bx0 = max(0, math.floor(allp[:, 0].min()) - pad)
    by0 = max(0, math.floor(allp[:, 1].min()) - pad)
    bx1 = min(size[1], math.ceil(allp[:, 0].max()) + pad + 1)
    by1 = min(size[0], math.ceil(allp[:, 1].max()) + pad + 1)
    if bx1 <= bx0 or by1 <= by0:
        return None
    # A wide feather hides detail anyway: draw and blur it at a reduced scale, then enlarge.
    down = int(min(8, max(1, sigma // 3)))
    bw, bh = bx1 - bx0, by1 - by0
    mask = np.zeros((-(-bh // down), -(-bw // down)), np.uint8)
    local = [_fixed((p - _v(bx0, by0) + 0.5) / down - 0.5) for p in pts]
    if stroke:
        cv2.polylines(mask, local, shape.closed, (255,), max(1, round(stroke_px / down)), cv2.LINE_AA, _SHIFT)
    else:
        cv2.fillPoly(mask, local, (255,), cv2.LINE_AA if down > 1 else cv2.LINE_8, _SHIFT)
    cover: np.ndarray = mask.astype(np.float32) * (1.0 / 255.0)
    if sigma > 0.5:
        cover = cv2.GaussianBlur(cover, (0, 0), sigma / down)
    if down > 1:
        cover = cv2.resize(
            cover, (mask.shape[1] * down, mask.shape[0] * down), interpolation=cv2.INTER_LINEAR
        )[:bh, :bw]
    return (bx0, by0, bx1, by1), cover


def _paint(
    canvas: np.ndarray,
    cover: tuple[tuple[int, int, int, int], np.ndarray],
    shape: Shape,
    paint: Paint,
    coverages: dict[str, np.ndarray],
    place: _Placement,
    rect: _Rect,
    ss: int,
) -> None:
    (bx0, by0, bx1, by1), cov = cover
    alpha = cov * shape.opacity
    if shape.clip is not None:
        alpha = alpha * coverages[shape.clip][by0:by1, bx0:bx1]
    if isinstance(paint, Gradient):
        xs = ((np.arange(bx0, bx1, dtype=np.float32) + 0.5) / ss + rect.x0 - place.ox) / place.scale
        ys = ((np.arange(by0, by1, dtype=np.float32) + 0.5) / ss + rect.y0 - place.oy) / place.scale
        color = _gradient(paint, xs, ys)
        alpha = alpha * color[:, :, 3]
        rgb = color[:, :, :3]
    else:
        alpha = alpha * paint[3]
        rgb = np.array(paint[:3], np.float32)
    region = canvas[by0:by1, bx0:bx1]
    alpha = np.ascontiguousarray(alpha, dtype=np.float32)
    a4 = cv2.merge([alpha, alpha, alpha, alpha])
    if isinstance(paint, Gradient):
        src = cv2.merge([rgb[:, :, 0] * alpha, rgb[:, :, 1] * alpha, rgb[:, :, 2] * alpha, alpha])
    else:
        src = a4 * np.array([rgb[0], rgb[1], rgb[2], 1.0], np.float32)
    # Premultiplied "over": region = src + region * (1 - alpha), with cv2's vectorised float ops.
    region[:] = cv2.add(src, cv2.subtract(region, cv2.multiply(region, a4)))


def _gradient(g: Gradient, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Straight RGBA of the gradient at the grid ``ys x xs`` (normalised coordinates)."""
    if g.kind == "linear":
        x0, y0, x1, y1 = g.coords
        dx, dy = x1 - x0, y1 - y0
        t = ((xs[None, :] - x0) * dx + (ys[:, None] - y0) * dy) / (dx * dx + dy * dy)
    else:
        cx, cy, rx, ry = g.coords
        t = np.sqrt(((xs[None, :] - cx) / rx) ** 2 + ((ys[:, None] - cy) / ry) ** 2)
    t = np.clip(t, 0.0, 1.0)
    offsets = [s[0] for s in g.stops]
    out = np.empty((*t.shape, 4), np.float32)
    for ch in range(4):
        out[:, :, ch] = np.interp(t, offsets, [s[1][ch] for s in g.stops])
    return out


def _mean_color(canvases: list[tuple[Layer, np.ndarray, _Rect]], rect: _Rect, ss: int) -> RGBA:
    """The average colour the head layers show inside ``rect`` (rest pose)."""
    out = np.zeros((rect.h * ss, rect.w * ss, 4), np.float32)
    for _, canvas, crect in canvases:
        ox0, oy0 = max(rect.x0, crect.x0), max(rect.y0, crect.y0)
        ox1, oy1 = min(rect.x0 + rect.w, crect.x0 + crect.w), min(rect.y0 + rect.h, crect.y0 + crect.h)
        if ox1 <= ox0 or oy1 <= oy0:
            continue
        src = canvas[
            (oy0 - crect.y0) * ss : (oy1 - crect.y0) * ss, (ox0 - crect.x0) * ss : (ox1 - crect.x0) * ss
        ]
        dst = out[(oy0 - rect.y0) * ss : (oy1 - rect.y0) * ss, (ox0 - rect.x0) * ss : (ox1 - rect.x0) * ss]
        dst[:] = src + dst * (1.0 - src[:, :, 3:])
    total = out.reshape(-1, 4).sum(axis=0)
    if total[3] <= 0:
        return (0.9, 0.75, 0.65, 1.0)
    return (float(total[0] / total[3]), float(total[1] / total[3]), float(total[2] / total[3]), 1.0)


# ---------------------------------------------------------------------------------------------
# Pixel helpers


def _quantise(value: float, step: float, lo: float, hi: float) -> float:
    if not math.isfinite(value):
        value = 0.0
    v = min(hi, max(lo, value))
    return round(v / step) * step


def _v(x: float, y: float) -> np.ndarray:
    """A 2-vector (so that point arithmetic reads as arithmetic, not list concatenation)."""
    return np.array([x, y], dtype=np.float64)


def _fixed(pts: np.ndarray) -> np.ndarray:
    return np.round(pts * _ONE).astype(np.int32)


def _fill(img: np.ndarray, pts: np.ndarray, color: Sequence[float]) -> None:
    cv2.fillPoly(img, [_fixed(pts)], color, cv2.LINE_8, _SHIFT)


def _circle(img: np.ndarray, centre: np.ndarray, radius: float, color: Sequence[float]) -> None:
    if radius <= 0:
        return
    c = (round(centre[0] * _ONE), round(centre[1] * _ONE))
    cv2.circle(img, c, max(1, round(radius * _ONE)), color, -1, cv2.LINE_8, _SHIFT)


def _circle_mask(shape: tuple[int, ...], centre: np.ndarray, radius: float) -> np.ndarray:
    mask = np.zeros(shape[:2], np.uint8)
    _circle(mask, centre, radius, (255,))
    return mask


def _resample(sprite: _Sprite, lin: np.ndarray, frac: np.ndarray, rgba: bool) -> _Placed:
    """Rotate/scale the sprite by ``lin`` and shift it by the sub-pixel ``frac``."""
    src = sprite.rgba
    h, w = src.shape[:2]
    if lin[0, 0] == 1.0 and lin[1, 1] == 1.0 and lin[0, 1] == 0.0 and lin[1, 0] == 0.0 and not frac.any():
        pixels, x0, y0 = src, 0, 0
    else:
        # Bounding box of the moved sprite (pixel i spans i - 0.5 .. i + 0.5).
        corners = (
            np.array([[-0.5, -0.5], [w - 0.5, -0.5], [-0.5, h - 0.5], [w - 0.5, h - 0.5]]) @ lin.T + frac
        )
        x0 = math.floor(corners[:, 0].min() + 0.5)
        y0 = math.floor(corners[:, 1].min() + 0.5)
        x1 = math.ceil(corners[:, 0].max() - 0.5) + 1
        y1 = math.ceil(corners[:, 1].max() - 0.5) + 1
        m = np.hstack([lin, (frac - _v(x0, y0))[:, None]])
        pixels = cv2.warpAffine(
            src,
            m,
            (x1 - x0, y1 - y0),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=(0, 0, 0, 0),
        )
    keep = cv2.bitwise_not(cv2.extractChannel(pixels, 3))
    if rgba:
        colour = pixels
        keep_c = cv2.merge([keep, keep, keep, keep])
    else:
        colour = cv2.cvtColor(pixels, cv2.COLOR_RGBA2RGB)
        keep_c = cv2.cvtColor(keep, cv2.COLOR_GRAY2RGB)
    return _Placed(colour, keep_c, x0, y0)


def _unpremultiply(frame: np.ndarray) -> np.ndarray:
    """Premultiplied RGBA to straight alpha (only anti-aliased edge pixels change)."""
    alpha = cv2.extractChannel(frame, 3)
    rgb = cv2.divide(
        cv2.cvtColor(frame, cv2.COLOR_RGBA2RGB), cv2.cvtColor(alpha, cv2.COLOR_GRAY2RGB), scale=255.0
    )
    return cv2.merge([rgb, alpha])


def _clip_rect(
    rect: tuple[int, int, int, int] | None, width: int, height: int
) -> tuple[int, int, int, int] | None:
    if rect is None:
        return None
    x0, y0, x1, y1 = max(0, rect[0]), max(0, rect[1]), min(width, rect[2]), min(height, rect[3])
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def _union(rois: list[tuple[int, int, int, int]]) -> tuple[int, int, int, int] | None:
    if not rois:
        return None
    return (
        min(r[0] for r in rois),
        min(r[1] for r in rois),
        max(r[2] for r in rois),
        max(r[3] for r in rois),
    )
