"""Photo avatars: a portrait that talks, blinks and moves its head, driven by ``FaceState``.

Drawing a frame is cheap because almost nothing is drawn: the framed portrait is the cached
base; the mouth and the eyes are two regions of it (ROIs) warped on the face mesh by a
piecewise-affine map (only its moving triangles are rasterised; the mouth's map on a
half-resolution grid) and cached by their quantised parameters; a subtle head motion is one
``cv2.remap`` of the head region. Nothing but those ROIs is ever touched, so pixels away from
the face stay exactly the photo's; a region is pasted only where its triangles lie, so
overlapping ROIs never undo each other.

No seams: each region is the set of mesh triangles touching a vertex that can move, so every
vertex on the region's border is fixed and the warp is continuous and equal to the identity
there; displacements also fade out smoothly towards the border (a feathered warp). The head
motion's displacement fades to zero over a band around the head in the same way, and moves
the background (known from the person matte) at a third of the head's amplitude.

Mouth: the inner lips part by ``open * MOUTH_GAP_AT_FULL_OPEN`` eye distances (the lower lip
and jaw take 72 % of it), corners and lips move for width, rounding, pressing, tucking and
smiling; where the lips part, a mouth interior (shadow, upper and lower teeth, tongue) is
painted. A portrait with parted lips is closed first, so ``open = 0`` always closes the mouth.
Eyes: the upper lid comes down to meet a slightly raised lower lid, dragging the lid skin
over the eye; the brows lift or lower with ``brow``. Gaze is not rendered (a photo's iris
cannot move convincingly in 2D).
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from avatar.face import topology as T
from avatar.face.cues import MOUTH_GAP_AT_FULL_OPEN
from avatar.face_state import FaceState, MouthShape

# Share of the lip gap the lower lip and jaw take (the rest is the upper lip rising).
JAW_SHARE = 0.72
# Cache budgets per renderer (a stage holds one): a mouth patch is 100-250 KB at 512x512
# depending on how much of the frame the face fills, so the entry count follows the budget.
# A spoken paragraph visits a few hundred quantised mouth shapes; 64 MB holds most of them
# (the illustrated renderer's sprite and pose caches are of the same order).
MOUTH_CACHE_BYTES = 64 << 20
EYE_CACHE_BYTES = 6 << 20
# Quantisation steps of the cached parameters.
_Q_OPEN = 24
_Q_SHAPE = 6
_Q_LID = 16
# Head motion limits (a photo cannot really turn, so large angles are clamped).
MAX_YAW = 20.0
MAX_PITCH = 15.0
MAX_ROLL = 12.0
NEUTRAL_SMILE = FaceState().smile


class PhotoAvatarLoadError(ValueError):
    """A photo avatar directory is incomplete or corrupt; the message names the file."""


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _taper(u: np.ndarray, power: float = 0.6) -> np.ndarray:
    """1 at the middle of a lip (u = 0), 0 at its corners (|u| = 1): the shape of an opening."""
    return np.power(np.clip(1.0 - u * u, 0.0, 1.0), power)


def _inv3(m: np.ndarray) -> np.ndarray:
    """Inverses of a stack of 3x3 matrices (closed form: numpy's batched inv is slow for tiny ones)."""
    a, b, c = m[:, 0, 0], m[:, 0, 1], m[:, 0, 2]
    d, e, f = m[:, 1, 0], m[:, 1, 1], m[:, 1, 2]
    g, h, i = m[:, 2, 0], m[:, 2, 1], m[:, 2, 2]
    co = np.stack(
        [
            np.stack([e * i - f * h, c * h - b * i, b * f - c * e], axis=-1),
            np.stack([f * g - d * i, a * i - c * g, c * d - a * f], axis=-1),
            np.stack([d * h - e * g, b * g - a * h, a * e - b * d], axis=-1),
        ],
        axis=1,
    )
    det = a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g)
    return np.asarray(co / det[:, None, None])


@dataclass
class _Region:
    """A warpable part of the face: its triangles, ROI and per-parameter displacement bases."""

    x0: int
    y0: int
    x1: int
    y1: int
    vids: np.ndarray  # (V,) global vertex ids
    src: np.ndarray  # (V, 2) source positions in frame px
    rest: np.ndarray  # (V, 2) positions the bases are added to (the mouth closed)
    tris: np.ndarray  # (T, 3) indices into vids
    bases: dict[str, np.ndarray]  # name -> (V, 2) px per unit parameter
    grid: tuple[np.ndarray, np.ndarray]  # ROI pixel x, y (float64)
    cover: np.ndarray  # uint8 0/1: ROI pixels inside the region's triangles

    def local(self, vid: int | tuple[int, ...]) -> np.ndarray:
        """Indices into this region's arrays of global vertex ids."""
        ids = np.atleast_1d(np.asarray(vid, dtype=np.int64))
        found = np.searchsorted(self.vids, ids)  # vids are sorted (np.unique)
        if (found >= len(self.vids)).any() or (self.vids[np.minimum(found, len(self.vids) - 1)] != ids).any():
            raise KeyError(f"vertices {ids.tolist()} are not all in this region")
        return found


class PhotoAvatar:
    """``AvatarRenderer`` for a photo avatar (see the module docstring). Per stage, not
    thread-safe (the caches are unguarded); ``render`` returns a fresh array each call."""

    def __init__(
        self,
        name: str,
        image: np.ndarray,
        matte: np.ndarray,
        vertices: np.ndarray,
        landmark_count: int,
        triangles: np.ndarray,
        title: str = "",
    ) -> None:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError("image must be RGB uint8")
        self.name = name
        self.title = title or name
        self.height, self.width = image.shape[:2]
        self._base = np.ascontiguousarray(image)
        self._matte = np.clip(matte.astype(np.float32), 0.0, 1.0)
        self._matte_u8 = np.round(self._matte * 255.0).astype(np.uint8)
        self._v = vertices.astype(np.float64)
        self._n_landmarks = landmark_count
        self._tris = triangles.astype(np.int64)

        p = self._v
        right, left = p[T.RIGHT_EYE_OUTER], p[T.LEFT_EYE_OUTER]
        axis = left - right
        self._eye_distance = float(np.hypot(*axis))
        self._ex = axis / self._eye_distance
        self._ey = np.array([-self._ex[1], self._ex[0]])
        self._palette()
        self._mouth = self._build_mouth_region()
        self._fill_photo_mouth()
        self._eyes = self._build_eyes_region()
        self._mouth_cache: OrderedDict[tuple[int, ...], np.ndarray] = OrderedDict()
        self._eye_cache: OrderedDict[tuple[int, ...], np.ndarray] = OrderedDict()
        self._build_head_motion()

    # ---------------------------------------------------------------- set-up

    def _face_coords(self, pts: np.ndarray, origin: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d = pts - origin
        return d @ self._ex, d @ self._ey

    def _palette(self) -> None:
        """Colours sampled from the photo, so the painted mouth interior matches its light."""
        p = self._v
        h, w = self.height, self.width
        lips = np.zeros((h, w), np.uint8)
        outer = np.array([p[i] for i in T.LIPS_UPPER_OUTER] + [p[i] for i in reversed(T.LIPS_LOWER_OUTER)])
        inner = np.array([p[i] for i in T.LIPS_UPPER_INNER] + [p[i] for i in reversed(T.LIPS_LOWER_INNER)])
        cv2.fillPoly(lips, [np.round(outer).astype(np.int32)], (255,))
        opening = np.zeros((h, w), np.uint8)
        cv2.fillPoly(opening, [np.round(inner).astype(np.int32)], (255,))
        lip_px = self._base[(lips > 0) & (opening == 0)]
        self._lip_rgb = np.median(lip_px, axis=0) if len(lip_px) else np.array([170.0, 90.0, 85.0])
        cheek = np.zeros((h, w), np.uint8)
        for a, b in ((T.RIGHT_EYE_LOWER[4], T.MOUTH_CORNER_RIGHT), (T.LEFT_EYE_LOWER[4], T.MOUTH_CORNER_LEFT)):
            c = (p[a] * 0.45 + p[b] * 0.55).round().astype(int)
            cv2.circle(cheek, (int(c[0]), int(c[1])), max(2, int(self._eye_distance * 0.06)), (255,), -1)
        skin_px = self._base[cheek > 0]
        self._skin_rgb = np.median(skin_px, axis=0) if len(skin_px) else np.array([200.0, 160.0, 140.0])
        lid = np.zeros((h, w), np.uint8)
        for upper, brow in ((T.LEFT_EYE_UPPER, T.LEFT_BROW), (T.RIGHT_EYE_UPPER, T.RIGHT_BROW)):
            mid_lid = p[upper[len(upper) // 2]]
            mid_brow = p[brow[len(brow) // 2]]
            c = (mid_lid * 0.55 + mid_brow * 0.45).round().astype(int)
            cv2.circle(lid, (int(c[0]), int(c[1])), max(1, int(self._eye_distance * 0.025)), (255,), -1)
        lid_px = self._base[lid > 0]
        self._lid_rgb = np.median(lid_px, axis=0).astype(np.float32) if len(lid_px) else self._skin_rgb.astype(np.float32)
        lum = float(self._skin_rgb @ np.array([0.299, 0.587, 0.114]))
        light = float(np.clip(lum / 175.0, 0.55, 1.08))
        # Off-white, lit like the face: a little of the skin's hue keeps them from looking blue.
        teeth = (np.array([236.0, 230.0, 218.0]) * 0.85 + self._skin_rgb * 0.15) * light
        # A portrait with parted lips shows its own teeth: take their colour from it.
        teeth_px = self._base[opening > 0]
        if len(teeth_px) > 30:
            bright = teeth_px[teeth_px.sum(axis=1) >= np.percentile(teeth_px.sum(axis=1), 80)]
            sample = np.median(bright, axis=0)
            if sample.mean() > 110:
                teeth = sample * 0.7 + teeth * 0.3
        self._teeth_rgb = np.clip(teeth, 0, 255)
        self._shadow_rgb = np.clip(self._lip_rgb * 0.34 + np.array([6.0, 0.0, 0.0]), 0, 255)
        self._tongue_rgb = np.clip(self._lip_rgb * np.array([0.95, 0.62, 0.64]), 0, 255)

    def _fill_photo_mouth(self) -> None:
        """Paint over the photo's own mouth opening (its teeth) with the lips around it.

        ``open = 0`` squeezes that opening shut, and mesh landmarks rarely hug the teeth
        exactly: without this, slivers of the photo's teeth would show between closed lips.
        """
        if self._photo_gap < 0.02 * self._eye_distance:
            return
        p = self._v
        inner = np.array([p[i] for i in T.LIPS_UPPER_INNER] + [p[i] for i in reversed(T.LIPS_LOWER_INNER)])
        mask: np.ndarray = np.zeros((self.height, self.width), np.uint8)
        cv2.fillPoly(mask, [np.round(inner).astype(np.int32)], (255,))
        grow = max(1, round(0.03 * self._eye_distance))
        mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1)))
        self._base = cv2.inpaint(self._base, mask, max(2.0, grow * 2.0), cv2.INPAINT_TELEA)

    def _region(self, moving: np.ndarray, bases: dict[str, np.ndarray], rest: np.ndarray, margin: float) -> _Region:
        """The region of triangles touching a vertex in ``moving`` (bool over all vertices)."""
        touches = moving[self._tris].any(axis=1)
        tris = self._tris[touches]
        vids = np.unique(tris)
        index = np.full(len(self._v), -1, np.int64)
        index[vids] = np.arange(len(vids))
        local_tris = index[tris]
        src = self._v[vids]
        # Vertices on the region's border must not move: zero their bases.
        border = ~moving[vids]
        local_bases = {}
        for k, b in bases.items():
            lb = b[vids].copy()
            lb[border] = 0.0
            local_bases[k] = lb
        r = rest[vids].copy()
        r[border] = src[border]
        lo = np.floor(src.min(axis=0) - margin).astype(int)
        hi = np.ceil(src.max(axis=0) + margin).astype(int)
        x0, y0 = max(0, int(lo[0])), max(0, int(lo[1]))
        x1, y1 = min(self.width, int(hi[0])), min(self.height, int(hi[1]))
        ys, xs = np.mgrid[0 : y1 - y0, 0 : x1 - x0].astype(np.float64)
        # Outside its triangles a region's warp is the identity: only the covered pixels are
        # pasted, so overlapping ROIs (mouth and eyes) never undo each other's work.
        painted = np.zeros((y1 - y0, x1 - x0), np.uint8)
        for tri in np.round((src[local_tris] - (x0, y0)) * 16.0).astype(np.int32):
            cv2.fillConvexPoly(painted, tri, (1,), lineType=cv2.LINE_8, shift=4)
        cover = np.asarray(cv2.dilate(painted, np.ones((3, 3), np.uint8)))
        return _Region(x0, y0, x1, y1, vids, src, r, local_tris.astype(np.int32), local_bases, (xs, ys), cover)

    def _build_mouth_region(self) -> _Region:
        p = self._v
        n = len(p)
        D = self._eye_distance
        ex, ey = self._ex, self._ey
        up_in, lo_in = np.array(T.LIPS_UPPER_INNER), np.array(T.LIPS_LOWER_INNER)
        up_out, lo_out = np.array(T.LIPS_UPPER_OUTER), np.array(T.LIPS_LOWER_OUTER)
        centre = (p[T.LIP_UPPER_INNER_MID] + p[T.LIP_LOWER_INNER_MID]) / 2.0
        x, w = self._face_coords(p, centre)
        hw = float(np.hypot(*(p[T.MOUTH_CORNER_LEFT] - p[T.MOUTH_CORNER_RIGHT]))) / 2.0
        hw_in = float(np.hypot(*(p[308] - p[78]))) / 2.0
        corner_w = float((w[T.MOUTH_CORNER_LEFT] + w[T.MOUTH_CORNER_RIGHT]) / 2.0)

        is_ring = np.arange(n) >= self._n_landmarks
        lip_ids = set(T.LIPS_UPPER_OUTER) | set(T.LIPS_LOWER_OUTER) | set(T.LIPS_UPPER_INNER) | set(T.LIPS_LOWER_INNER)
        corners = np.array([T.MOUTH_CORNER_RIGHT, T.MOUTH_CORNER_LEFT, 78, 308])
        other = np.array([i for i in range(n) if i not in lip_ids and not is_ring[i]])

        # A soft window bounds the region: lips and chin inside, nose and cheekbones outside.
        ay = np.where(w < 0, 0.34 * D, 1.3 * D)
        r = np.hypot(x / (1.05 * D), w / ay)
        window = 1.0 - _smoothstep(0.62, 1.0, r)
        window[is_ring] = 0.0

        def vec(dx: np.ndarray | float, dy: np.ndarray | float) -> np.ndarray:
            """Displacements from components along the face's x (eye line) and y axes."""
            along = np.atleast_1d(np.asarray(dx, dtype=np.float64))
            down = np.atleast_1d(np.asarray(dy, dtype=np.float64))
            return np.asarray(np.outer(along, ex) + np.outer(down, ey))

        zeros = np.zeros((n, 2))
        b_open, b_width, b_round, b_press, b_tuck, b_smile = (zeros.copy() for _ in range(6))

        # Skin below the lips follows the jaw; beside the corners the jaw's pull fades in
        # gradually (no shear line at the corners' level), and it fades out towards the ears.
        jaw = 1.0 - _smoothstep(0.3 * D, 1.2 * D, np.abs(x))
        beside = _smoothstep(0.8 * hw, 1.3 * hw, np.abs(x))
        below = np.where(w > 0, 1.0, 0.0) * (1.0 - beside) + _smoothstep(-0.1 * D, 0.18 * D, w - corner_w) * beside
        b_open[other] = vec(0.0, JAW_SHARE * jaw[other] * below[other])
        b_open[is_ring] = 0.0

        u_in = x / hw_in
        u_out = x / hw
        # The opening is lens-shaped: full height in the middle, tapering smoothly into the
        # corners, which the cheeks hold (they drop by a fifth of the jaw's travel). The lower
        # lip moves as one piece, inner and outer edges alike, so it does not thicken.
        f_in, f_out = _taper(u_in, 1.0), _taper(u_out, 1.0)
        corner_drop = 0.22
        b_open[up_out] = vec(0.0, -0.10 * f_out[up_out])
        b_open[lo_out] = vec(0.0, JAW_SHARE * (corner_drop + (1.0 - corner_drop) * f_out[lo_out]))
        b_open[up_in] = vec(0.0, -(1.0 - JAW_SHARE) * f_in[up_in])
        b_open[lo_in] = vec(0.0, JAW_SHARE * (corner_drop + (1.0 - corner_drop) * f_in[lo_in]))
        b_open[corners] = vec(-np.sign(x[corners]) * 0.06, JAW_SHARE * corner_drop)

        # Lips and the skin near them: a falloff from the lips into the cheeks.
        lips_r = np.hypot(x / (1.1 * hw), w / (0.22 * D))
        near = np.exp(-np.square(np.maximum(lips_r - 1.0, 0.0)) / 0.35)
        lips_all = np.array(sorted(lip_ids))
        near[lips_all] = 1.0
        # Width: the mouth spreads or narrows by a fifth of its width.
        b_width[:] = vec(0.2 * x * near, 0.0)
        b_width[corners] = vec(0.2 * x[corners], 0.0)
        # Rounding: narrower, lips pushed out (thicker), the opening rounder.
        b_round[:] = vec(-0.18 * x * near, 0.0)
        b_round[up_out] += vec(0.0, -0.035 * D * f_out[up_out])
        b_round[lo_out] += vec(0.0, 0.035 * D * f_out[lo_out])
        inner_all = np.unique(np.concatenate([up_in, lo_in]))
        b_round[inner_all] += vec(-0.2 * x[inner_all], 0.0)
        # Pressing: lips thinned towards the line where they meet.
        b_press[up_out] = vec(0.0, 0.025 * D * f_out[up_out])
        b_press[lo_out] = vec(0.0, -0.03 * D * f_out[lo_out])
        # Tucking ("f", "v"): the lower lip rises and rolls in under the upper teeth.
        b_tuck[lo_out] = vec(0.0, -0.05 * D * (0.4 + 0.6 * f_out[lo_out]))
        b_tuck[lo_in] = vec(0.0, -0.025 * D * f_in[lo_in])
        # Smiling: the corners rise and widen, the cheeks beside them follow.
        to_corner = np.minimum(
            np.hypot(*(p - p[T.MOUTH_CORNER_LEFT]).T), np.hypot(*(p - p[T.MOUTH_CORNER_RIGHT]).T)
        )
        cheek = np.exp(-np.square(to_corner / (0.22 * D)))
        lip_weight = np.clip(np.abs(u_out), 0.0, 1.0) ** 2
        smile_w = np.maximum(cheek, np.where(np.isin(np.arange(n), lips_all), lip_weight, 0.0))
        b_smile[:] = vec(0.06 * D * np.sign(x) * smile_w, -0.07 * D * smile_w)

        bases = {"open": b_open, "width": b_width, "round": b_round, "press": b_press, "tuck": b_tuck, "smile": b_smile}
        for b in bases.values():
            b *= window[:, None]
            b[is_ring] = 0.0
        # The rest shape: the photo's own gap closed, so that open = 0 is a closed mouth. Inner
        # lips meet 40 % of the way down from the upper one; everything else moves back by the
        # photo's gap along the opening basis.
        gap0 = float(np.hypot(*(p[T.LIP_LOWER_INNER_MID] - p[T.LIP_UPPER_INNER_MID])))
        self._photo_gap = gap0
        rest = p - gap0 * b_open
        inner_pairs = [(a, b) for a, b in zip(T.LIPS_UPPER_INNER[1:-1], T.LIPS_LOWER_INNER[1:-1], strict=True)]
        for up_id, lo_id in inner_pairs:
            meet = p[up_id] + (p[lo_id] - p[up_id]) * (1.0 - JAW_SHARE)
            rest[up_id] = meet
            rest[lo_id] = meet

        moving = np.zeros(n, bool)
        for b in bases.values():
            moving |= np.abs(b).sum(axis=1) > 1e-6
        moving |= np.abs(rest - p).sum(axis=1) > 1e-6
        margin = JAW_SHARE * MOUTH_GAP_AT_FULL_OPEN * D + 0.1 * D
        region = self._region(moving, bases, rest, margin)
        return region

    def _build_eyes_region(self) -> _Region:
        """Both eyes and brows: one region, as their feathered neighbourhoods overlap."""
        p = self._v
        n = len(p)
        D = self._eye_distance
        is_ring = np.arange(n) >= self._n_landmarks
        bases: dict[str, np.ndarray] = {}
        window_all = np.zeros(n)
        b_brow = np.zeros((n, 2))
        for side in ("left", "right"):
            upper, lower = T.eye_contours(side)
            brow = T.LEFT_BROW if side == "left" else T.RIGHT_BROW
            centre = (p[list(upper)].mean(axis=0) + p[list(lower)].mean(axis=0)) / 2.0
            x, w = self._face_coords(p, centre)
            hw = float(np.hypot(*(p[upper[-1]] - p[upper[0]]))) / 2.0
            ay = np.where(w < 0, 0.5 * D, 0.22 * D)
            window = 1.0 - _smoothstep(0.55, 1.0, np.hypot(x / (0.42 * D), w / ay))
            window[is_ring] = 0.0
            window_all = np.maximum(window_all, window)

            b_close = np.zeros((n, 2))
            # The lids meet 85 % of the way down: the upper lid does most of a blink.
            travel = np.zeros(len(upper))
            for i, (a, b) in enumerate(zip(upper, lower, strict=True)):
                meet = p[b] + (p[a] - p[b]) * 0.15
                b_close[a] = meet - p[a]
                b_close[b] = meet - p[b]
                travel[i] = float((meet - p[a]) @ self._ey)
            contour_x = x[list(upper)]
            order = np.argsort(contour_x)
            lid_w = w[list(upper)][order]
            low_w = w[list(lower)][order]
            cx = contour_x[order]
            bx, bw = x[list(brow)], w[list(brow)]
            border = np.argsort(bx)
            contour_ids = set(upper) | set(lower)
            others = np.array([i for i in range(T.NUM_LANDMARKS) if i not in contour_ids])
            ox, ow = x[others], w[others]
            lid_here = np.interp(ox, cx, lid_w)
            travel_here = np.interp(ox, cx, travel[order])
            brow_here = np.interp(ox, bx[border], bw[border])
            # The lid skin between lash line and brow unrolls over the eye: right above the
            # lashes it moves with them (so lashes slide down rather than smear), at the brow
            # not at all.
            span = np.maximum(lid_here - brow_here, 0.05 * D)
            above = np.clip((lid_here - ow) / span, 0.0, 1.0)
            follow = np.where(ow < lid_here, np.clip(1.0 - above, 0.0, 1.0) ** 0.6, 0.0)
            lateral = 1.0 - _smoothstep(1.0 * hw, 1.7 * hw, np.abs(ox))
            low_here = np.interp(ox, cx, low_w)
            below = np.maximum(ow - low_here, 0.0)
            rise = np.where(ow > low_here, np.exp(-below / (0.05 * D)), 0.0)
            b_close[others] = np.outer(travel_here * (follow * lateral) - travel_here * 0.176 * rise * lateral, self._ey)
            b_close *= window[:, None]
            b_close[is_ring] = 0.0
            bases[f"close_{side}"] = b_close

            # Brows rise by 6 % of the eye distance at brow = 1; the skin between brow and lid
            # stretches linearly, the forehead above follows with a falloff.
            brow_all = np.interp(x, bx[border], bw[border])
            lid_all = np.interp(x, cx, lid_w)
            between = np.clip((lid_all - w) / np.maximum(lid_all - brow_all, 1e-3), 0.0, 1.0)
            above_brow = np.exp(-np.square(np.maximum(brow_all - w, 0.0) / (0.22 * D)))
            lift = np.where(w >= brow_all, between, above_brow)
            lift[list(contour_ids)] = 0.0
            lateral_all = 1.0 - _smoothstep(1.4 * hw, 2.4 * hw, np.abs(x))
            b_brow += np.outer(-0.06 * D * lift * lateral_all * window, self._ey)
        b_brow[is_ring] = 0.0
        bases["brow"] = b_brow
        moving = np.zeros(n, bool)
        for basis in bases.values():
            moving |= np.abs(basis).sum(axis=1) > 1e-6
        return self._region(moving, bases, p.copy(), 0.1 * D)

    def _build_head_motion(self) -> None:
        """Weights of the head motion: 1 on the head, fading to 0 over the neck and around."""
        p = self._v
        D = self._eye_distance
        oval = p[list(T.FACE_OVAL)]
        centre = oval.mean(axis=0) - self._ey * 0.25 * D  # hair sits above the face outline
        self._pivot = p[T.CHIN] + self._ey * 0.2 * D  # the head tilts about the top of the neck
        ax, ay = 1.35 * D, 1.7 * D
        feather = 0.7 * D
        x0 = int(max(0, math.floor(centre[0] - ax - feather)))
        x1 = int(min(self.width, math.ceil(centre[0] + ax + feather)))
        y0 = int(max(0, math.floor(centre[1] - ay - feather)))
        y1 = int(min(self.height, math.ceil(centre[1] + ay + feather)))
        ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float64)
        dx, dy = xs - centre[0], ys - centre[1]
        u = dx * self._ex[0] + dy * self._ex[1]
        v = dx * self._ey[0] + dy * self._ey[1]
        r = np.hypot(u / ax, v / ay)
        dist_out = np.maximum(r - 1.0, 0.0) * min(ax, ay)
        weight = 1.0 - _smoothstep(0.0, feather, dist_out)
        # The background moves less than the person (a blurred matte keeps the map smooth), so
        # a turning head does not drag the room with it.
        person = cv2.GaussianBlur(self._matte, (0, 0), 0.25 * D)[y0:y1, x0:x1].astype(np.float64)
        weight *= 0.35 + 0.65 * person
        # Trim the ROI to where the head moves at all (a weight of 0.003 is under 0.05 px at
        # the largest motion), then make it exactly zero on the ROI border so that pasting the
        # remapped ROI back leaves no edge.
        rows = np.nonzero((weight > 0.003).any(axis=1))[0]
        cols = np.nonzero((weight > 0.003).any(axis=0))[0]
        r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 2, int(cols[0]), int(cols[-1]) + 2
        weight = weight[r0:r1, c0:c1].copy()
        xs, ys = xs[r0:r1, c0:c1], ys[r0:r1, c0:c1]
        x0, y0, x1, y1 = x0 + c0, y0 + r0, x0 + c0 + weight.shape[1], y0 + r0 + weight.shape[0]
        weight[0, :] = weight[-1, :] = 0.0
        weight[:, 0] = weight[:, -1] = 0.0
        self._head_roi = (x0, y0, x1, y1)
        # The displacement is smooth, so it is computed on a grid 4x coarser and interpolated.
        step = 4
        self._head_step = step
        gw, gh = (x1 - x0 + step - 1) // step + 1, (y1 - y0 + step - 1) // step + 1
        gy, gx = np.mgrid[0:gh, 0:gw].astype(np.float64) * step
        self._head_gx = (gx + x0).astype(np.float32)
        self._head_gy = (gy + y0).astype(np.float32)
        gxi = np.clip(gx.astype(int), 0, x1 - x0 - 1)
        gyi = np.clip(gy.astype(int), 0, y1 - y0 - 1)
        grid_w = weight[gyi, gxi]
        grid_w[gx > x1 - x0 - 1] = 0.0
        grid_w[gy > y1 - y0 - 1] = 0.0
        self._head_w = grid_w.astype(np.float32)
        self._head_xs = xs.astype(np.float32)
        self._head_ys = ys.astype(np.float32)

    # ---------------------------------------------------------------- warping

    def _warp_patch(self, region: _Region, dst: np.ndarray, step: int = 1) -> np.ndarray:
        """The region's ROI of the photo, warped piecewise-affinely to the moved vertices.

        Only triangles that move are rasterised (the rest of the ROI is the photo as is), and
        only over their bounding box: a speaking mouth moves a fraction of its region.
        """
        x0, y0 = region.x0, region.y0
        patch = self._base[y0 : region.y1, x0 : region.x1].copy()
        tri_d = dst[region.tris]  # (T, 3, 2) frame px
        tri_s = region.src[region.tris]
        moved = np.abs(tri_d - tri_s).max(axis=(1, 2)) > 0.02
        if not moved.any():
            return patch
        tri_d, tri_s = tri_d[moved], tri_s[moved]
        both = np.concatenate([tri_d.reshape(-1, 2), tri_s.reshape(-1, 2)])
        bx0 = max(x0, math.floor(both[:, 0].min()) - 1)
        by0 = max(y0, math.floor(both[:, 1].min()) - 1)
        bx1 = min(region.x1, math.ceil(both[:, 0].max()) + 2)
        by1 = min(region.y1, math.ceil(both[:, 1].max()) + 2)
        # With ``step = 2`` the maps are computed on a half-resolution grid and interpolated:
        # piecewise-affine maps are linear inside each triangle, so this is exact but within a
        # pixel of triangle edges, and a cache miss gets about three times cheaper. Not for the
        # lids: there a collapsed strip sits between two triangles and interpolation across it
        # lets specks of the eye through. Grid point (i, k) stands for the point
        # (bx0 + step * i + off, by0 + step * k + off), which is what a ``step``x cv2.resize
        # expects of its input samples.
        h, w = by1 - by0, bx1 - bx0
        off = (step - 1) / 2.0
        hh, hw = (h + step - 1) // step + (step > 1), (w + step - 1) // step + (step > 1)
        full = tri_d - (bx0, by0)
        area = np.abs(
            (full[:, 1, 0] - full[:, 0, 0]) * (full[:, 2, 1] - full[:, 0, 1])
            - (full[:, 2, 0] - full[:, 0, 0]) * (full[:, 1, 1] - full[:, 0, 1])
        )
        d = (full - off) / step  # grid coordinates
        label = np.full((hh, hw), -1, np.int32)
        cover = np.zeros((hh, hw), np.uint8)
        fixed = np.round(d * 16.0).astype(np.int32)
        for t in np.argsort(area):  # large triangles last: they win shared edge pixels
            if area[t] < 0.5:
                # A collapsed triangle (closed lips or lids) has no affine inverse: leave its
                # pixels to the neighbours, filled in below.
                cv2.fillConvexPoly(cover, fixed[t], (1,), lineType=cv2.LINE_8, shift=4)
                continue
            cv2.fillConvexPoly(label, fixed[t], (int(t),), lineType=cv2.LINE_8, shift=4)
        holes = (cover > 0) & (label < 0)
        for _ in range(4):
            if not holes.any():
                break
            grown = cv2.dilate(label.astype(np.float32), np.ones((3, 3), np.uint8)).astype(np.int32)
            label[holes] = grown[holes]
            holes = (cover > 0) & (label < 0)
        dh = np.concatenate([full.transpose(0, 2, 1), np.ones((len(full), 1, 3))], axis=1)  # (T,3,3)
        dh[area < 0.5] = np.eye(3)  # collapsed triangles are never looked up (see above)
        affine = tri_s.transpose(0, 2, 1) @ _inv3(dh)  # (T,2,3): frame src = A @ [x, y, 1]
        gk, gi = np.mgrid[0:hh, 0:hw].astype(np.float64)
        px, py = step * gi + off, step * gk + off  # bounding-box coordinates of the grid points
        mapx = px + bx0
        mapy = py + by0
        inside = label >= 0
        a = affine[label[inside]]
        qx, qy = px[inside], py[inside]
        mapx[inside] = a[:, 0, 0] * qx + a[:, 0, 1] * qy + a[:, 0, 2]
        mapy[inside] = a[:, 1, 0] * qx + a[:, 1, 1] * qy + a[:, 1, 2]
        if step > 1:
            size = (step * hw, step * hh)
            fine_x = cv2.resize(mapx.astype(np.float32), size, interpolation=cv2.INTER_LINEAR)[:h, :w]
            fine_y = cv2.resize(mapy.astype(np.float32), size, interpolation=cv2.INTER_LINEAR)[:h, :w]
            moving_px = cv2.resize(inside.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)[:h, :w]
        else:
            fine_x, fine_y = mapx.astype(np.float32), mapy.astype(np.float32)
            moving_px = inside.astype(np.uint8)
        warped = cv2.remap(self._base, fine_x, fine_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        # Where a triangle is stretched to several times its size (the lip near the corners of
        # a wide-open mouth), a few photo pixels cover many: soften them so they do not show
        # as steps.
        src_area = np.abs(
            (tri_s[:, 1, 0] - tri_s[:, 0, 0]) * (tri_s[:, 2, 1] - tri_s[:, 0, 1])
            - (tri_s[:, 2, 0] - tri_s[:, 0, 0]) * (tri_s[:, 1, 1] - tri_s[:, 0, 1])
        )
        stretch = np.where(area >= 0.5, area / np.maximum(src_area, 0.05), 1.0)
        stretched = (stretch > 3.0) & (src_area > 0.5)  # collapsed strips are painted over anyway
        if stretched.any():
            amount: np.ndarray = np.zeros((hh, hw), np.float32)
            amount[inside] = np.clip((stretch[label[inside]] - 3.0) / 6.0, 0.0, 1.0) * stretched[label[inside]]
            if step > 1:
                amount = np.asarray(cv2.resize(amount, (step * hw, step * hh), interpolation=cv2.INTER_LINEAR))[:h, :w]
            amount = np.asarray(cv2.GaussianBlur(amount, (0, 0), 1.5))[..., None]
            soft = cv2.GaussianBlur(warped, (0, 0), 1.2)
            warped = np.clip(warped * (1.0 - amount) + soft * amount + 0.5, 0, 255).astype(np.uint8)
        # Pixels of triangles that did not move stay bit-exact (interpolation at the edge of the
        # moving area would otherwise blur them by a fraction of a level).
        moving_px = cv2.dilate(moving_px, np.ones((2 * step + 1, 2 * step + 1), np.uint8))
        cv2.copyTo(warped, moving_px, patch[by0 - y0 : by1 - y0, bx0 - x0 : bx1 - x0])
        return patch

    def _mouth_patch(self, key: tuple[int, ...]) -> np.ndarray:
        cached = self._mouth_cache.get(key)
        if cached is not None:
            self._mouth_cache.move_to_end(key)
            return cached
        o, wd, rd, pr, tk, tg, th, sm = key
        mouth = MouthShape(
            open=o / _Q_OPEN, width=wd / _Q_SHAPE, round=rd / _Q_SHAPE, press=pr / _Q_SHAPE,
            tuck=tk / _Q_SHAPE, tongue=tg / _Q_SHAPE, teeth=th / _Q_SHAPE,
        )  # fmt: skip
        patch = self._draw_mouth(mouth, sm / _Q_SHAPE)
        self._mouth_cache[key] = patch
        if len(self._mouth_cache) > max(16, MOUTH_CACHE_BYTES // patch.nbytes):
            self._mouth_cache.popitem(last=False)
        return patch

    def mouth_gap_px(self, mouth: MouthShape) -> float:
        """The inner-lip gap (px) drawn for ``mouth``: ``open * MOUTH_GAP_AT_FULL_OPEN`` eye
        distances, less what pressing and tucking take away."""
        open_eff = max(0.0, min(1.0, mouth.open)) * (1.0 - max(0.0, min(1.0, mouth.press)))
        open_eff *= 1.0 - 0.6 * max(0.0, min(1.0, mouth.tuck))
        gap = open_eff * MOUTH_GAP_AT_FULL_OPEN * self._eye_distance
        return max(gap, 0.05 * self._eye_distance * max(0.0, mouth.tuck))

    def _draw_mouth(self, mouth: MouthShape, smile: float) -> np.ndarray:
        reg = self._mouth
        D = self._eye_distance
        gap = self.mouth_gap_px(mouth)
        b = reg.bases
        dst = (
            reg.rest
            + gap * b["open"]
            + mouth.width * b["width"]
            + mouth.round * b["round"]
            + mouth.press * b["press"]
            + mouth.tuck * b["tuck"]
            + (smile - NEUTRAL_SMILE) * b["smile"]
        )
        patch = self._warp_patch(reg, dst, step=2)
        up = dst[reg.local(T.LIPS_UPPER_INNER)] - (reg.x0, reg.y0)
        lo = dst[reg.local(T.LIPS_LOWER_INNER)] - (reg.x0, reg.y0)
        if gap > 0.35:
            self._paint_interior(patch, up, lo, mouth, gap, D)
        if gap < 2.5:
            self._paint_lip_line(patch, (up + lo) / 2.0, 1.0 - gap / 2.5)
        return patch

    def _paint_lip_line(self, patch: np.ndarray, line: np.ndarray, strength: float) -> None:
        """The soft shadow line where closed lips meet (it also hides the warp's pixel steps)."""
        pad = 4
        bx0 = max(0, math.floor(line[:, 0].min()) - pad)
        by0 = max(0, math.floor(line[:, 1].min()) - pad)
        bx1 = min(patch.shape[1], math.ceil(line[:, 0].max()) + pad + 1)
        by1 = min(patch.shape[0], math.ceil(line[:, 1].max()) + pad + 1)
        if bx1 <= bx0 or by1 <= by0:
            return
        box = patch[by0:by1, bx0:bx1]
        h, w = box.shape[:2]
        ss = 4
        mask = np.zeros((h * ss, w * ss), np.uint8)
        thickness = max(1, round(0.01 * self._eye_distance * ss))
        pts = np.round((line - (bx0, by0)) * ss * 8.0).astype(np.int32)
        n = len(pts)
        for i in range(n - 1):  # fainter towards the corners, where the lips fold into the cheek
            level = int(255 * min(1.0, 0.35 + 0.65 * math.sin(math.pi * (i + 0.5) / (n - 1))))
            a, b = (int(pts[i][0]), int(pts[i][1])), (int(pts[i + 1][0]), int(pts[i + 1][1]))
            cv2.line(mask, a, b, (level,), thickness, cv2.LINE_AA, 3)
        small = cv2.resize(mask, (w, h), interpolation=cv2.INTER_AREA)
        m = np.asarray(cv2.GaussianBlur(small, (0, 0), 0.6), np.float32) / 255.0
        alpha = (m * 0.6 * strength)[..., None]
        dark = self._lip_rgb.astype(np.float32) * 0.5
        out = box.astype(np.float32) * (1.0 - alpha) + dark * alpha
        box[:] = np.clip(out + 0.5, 0, 255).astype(np.uint8)

    def _paint_interior(
        self, patch: np.ndarray, up: np.ndarray, lo: np.ndarray, mouth: MouthShape, gap: float, D: float
    ) -> None:
        """Paint the mouth interior (shadow, teeth, tongue) inside the parted inner lips."""
        # Only the opening's bounding box is touched (painting the whole ROI costs 10x more).
        pts = np.vstack([up, lo])
        bx0 = max(0, math.floor(pts[:, 0].min()) - 3)
        by0 = max(0, math.floor(pts[:, 1].min()) - 3)
        bx1 = min(patch.shape[1], math.ceil(pts[:, 0].max()) + 4)
        by1 = min(patch.shape[0], math.ceil(pts[:, 1].max()) + 4)
        if bx1 <= bx0 or by1 <= by0:
            return
        patch = patch[by0:by1, bx0:bx1]
        up = up - (bx0, by0)
        lo = lo - (bx0, by0)
        h, w = patch.shape[:2]
        ss = 2  # supersampling of the painted shapes (with LINE_AA edges on top)

        def poly(points: np.ndarray) -> np.ndarray:
            return np.round(points * 8.0 * 1.0).astype(np.int32)

        def mask_of(points: np.ndarray) -> np.ndarray:
            m = np.zeros((h * ss, w * ss), np.uint8)
            cv2.fillPoly(m, [np.round(points * ss * 8.0).astype(np.int32)], (255,), lineType=cv2.LINE_AA, shift=3)
            return cv2.resize(m, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0

        opening = np.vstack([up, lo[::-1]])
        m_open = mask_of(opening)
        if m_open.max() <= 0.0:
            return
        ex, ey = self._ex, self._ey
        centre_top = up[len(up) // 2]
        hw_in = float(np.hypot(*(up[-1] - up[0]))) / 2.0
        u_up = ((up - up.mean(axis=0)) @ ex) / max(hw_in, 1e-3)
        u_lo = ((lo - lo.mean(axis=0)) @ ex) / max(hw_in, 1e-3)

        colour = np.empty((h, w, 3), np.float32)
        colour[:] = self._shadow_rgb
        # Depth: darker towards the back of the mouth (the middle of the opening).
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        mid = (up.mean(axis=0) + lo.mean(axis=0)) / 2.0
        radial = np.hypot((xs - mid[0]) / max(hw_in, 1.0), (ys - mid[1]) / max(gap, 1.0))
        colour *= (0.7 + 0.3 * np.clip(radial, 0.0, 1.0))[..., None]

        def layer(mask: np.ndarray, rgb: np.ndarray) -> None:
            colour[:] = colour * (1.0 - mask[..., None]) + rgb * mask[..., None]

        # Tongue: resting low in the mouth, rising towards the upper teeth with ``tongue``.
        lo_mid = lo[len(lo) // 2]
        tongue_lift = max(0.0, min(1.0, mouth.tongue))
        t_centre = lo_mid - ey * gap * (0.12 + 0.45 * tongue_lift)
        t_axes = (hw_in * (0.62 - 0.1 * tongue_lift), gap * (0.32 + 0.25 * tongue_lift))
        m_tongue = np.zeros((h * ss, w * ss), np.uint8)
        angle = math.degrees(math.atan2(ex[1], ex[0]))
        cv2.ellipse(
            m_tongue,
            (round(t_centre[0] * ss * 8), round(t_centre[1] * ss * 8)),
            (round(t_axes[0] * ss * 8), round(t_axes[1] * ss * 8)),
            angle, 180, 360, (255,), -1, cv2.LINE_AA, 3,
        )  # fmt: skip
        cv2.ellipse(
            m_tongue,
            (round(t_centre[0] * ss * 8), round(t_centre[1] * ss * 8)),
            (round(t_axes[0] * ss * 8), round(gap * 0.8 * ss * 8)),
            angle, 0, 180, (255,), -1, cv2.LINE_AA, 3,
        )  # fmt: skip
        m_t = cv2.resize(m_tongue, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
        tongue_shade = (0.55 + 0.45 * np.clip((ys - (t_centre[1] - t_axes[1])) / max(2.0 * t_axes[1], 1.0), 0.0, 1.0))[..., None]
        layer(m_t * (0.55 + 0.45 * min(1.0, mouth.open * 2.0 + tongue_lift)), self._tongue_rgb * tongue_shade)

        # Lower teeth: a narrow band above the lower lip when the teeth show.
        lower_show = min(1.0, max(0.0, (mouth.teeth - 0.35) / 0.65) + 0.3 * max(0.0, mouth.tuck))
        band = np.minimum(gap * 0.22, 0.045 * D) * lower_show * np.clip(1.0 - np.abs(u_lo) ** 2 * 2.2, 0.0, 1.0)
        if band.max() >= 1.5:  # thinner, it would read as an outline of the lip, not as teeth
            top = lo - np.outer(band, ey)
            m_low = mask_of(np.vstack([lo, top[::-1]]))
            layer(m_low * 0.9, self._teeth_rgb * 0.82)

        # Upper teeth: hang from the upper lip, tapering into the corners; the full height of
        # the gap for a tucked lower lip ("f"), otherwise about half of it.
        teeth_show = 0.55 + 0.45 * max(0.0, min(1.0, mouth.teeth))
        full = 0.1 * D * teeth_show
        depth = np.minimum(gap * (0.5 + 0.5 * max(0.0, mouth.tuck)), full)
        profile = np.clip(1.0 - np.abs(u_up) ** 1.6, 0.0, 1.0) ** 0.8
        bottom = up + np.outer(depth * profile, ey)
        m_teeth = mask_of(np.vstack([up, bottom[::-1]]))
        # Coordinates along the mouth (u, from its middle) and down from the upper lip (v).
        u = (xs - centre_top[0]) * ex[0] + (ys - centre_top[1]) * ex[1]
        v = (xs - centre_top[0]) * ey[0] + (ys - centre_top[1]) * ey[1]
        across = np.clip(np.abs(u) / max(hw_in, 1.0), 0.0, 1.0)
        shading = 1.0 - 0.6 * across**1.3
        # Faint gaps between the incisors.
        for k in (-0.42, -0.2, 0.0, 0.2, 0.42):
            shading *= 1.0 - 0.1 * np.exp(-np.square((u - k * hw_in) / 0.6))
        # The biting edge is a little darker (translucent enamel).
        shading *= 1.0 - 0.12 * np.exp(-np.square((v - float(depth.max())) / 1.2))
        teeth_rgb = self._teeth_rgb * shading[..., None]
        layer(m_teeth, teeth_rgb)

        # The lips shade the interior near them; the mouth's own edge is anti-aliased.
        edge = cv2.GaussianBlur(m_open, (0, 0), max(0.8, gap * 0.12))
        colour *= (0.7 + 0.3 * np.clip(edge * 1.6 - 0.3, 0.0, 1.0))[..., None]
        alpha = m_open[..., None]
        out = patch.astype(np.float32) * (1.0 - alpha) + colour * alpha
        patch[:] = np.clip(out + 0.5, 0, 255).astype(np.uint8)

    def _eye_patch(self, key: tuple[int, int, int]) -> np.ndarray:
        cache = self._eye_cache
        cached = cache.get(key)
        if cached is not None:
            cache.move_to_end(key)
            return cached
        reg = self._eyes
        b = reg.bases
        dst = (
            reg.rest
            + (key[0] / _Q_LID) * b["close_left"]
            + (key[1] / _Q_LID) * b["close_right"]
            + (key[2] / _Q_SHAPE) * b["brow"]
        )
        patch = self._warp_patch(reg, dst)
        for side, q in (("left", key[0]), ("right", key[1])):
            if q > 0:
                self._paint_lid(patch, reg, dst, side, q / _Q_LID)
        cache[key] = patch
        if len(cache) > max(8, EYE_CACHE_BYTES // patch.nbytes):
            cache.popitem(last=False)
        return patch

    def _paint_lid(self, patch: np.ndarray, reg: _Region, dst: np.ndarray, side: str, close: float) -> None:
        """Cover the part of the eye the lid has come down over with skin, keeping the warped
        lash line: stretched lid texture alone reads as smeared mascara."""
        upper, _lower = T.eye_contours(side)
        D = self._eye_distance
        ey = self._ey
        h, w = patch.shape[:2]
        origin = np.array([reg.x0, reg.y0], dtype=np.float64)
        top = self._v[list(upper)] - origin - ey * 0.02 * D  # the open lid's crease edge
        lash = dst[reg.local(upper)] - origin - ey * 0.03 * D * min(1.0, close * 2.0)
        ss = 4
        mask = np.zeros((h * ss, w * ss), np.uint8)
        poly = np.vstack([top, lash[::-1]])
        cv2.fillPoly(mask, [np.round(poly * ss * 8.0).astype(np.int32)], (255,), lineType=cv2.LINE_AA, shift=3)
        sharp = np.asarray(cv2.resize(mask, (w, h), interpolation=cv2.INTER_AREA), np.float32) / 255.0
        m = np.asarray(cv2.GaussianBlur(sharp, (0, 0), max(0.6, 0.012 * D)))
        if m.max() <= 0.0:
            return
        # Lid colour: the skin of the photo's own lid, a little darker towards the lashes.
        ys = np.arange(h, dtype=np.float32)[:, None] - float(top[:, 1].mean())
        depth = np.clip(ys / max(float(lash[:, 1].mean() - top[:, 1].mean()), 1.0), 0.0, 1.0)
        shade = (1.0 - 0.12 * depth)[..., None]
        lid = np.broadcast_to(self._lid_rgb, (h, w, 3)) * shade
        alpha = (m * min(1.0, 0.35 + close * 0.75))[..., None]
        out = patch.astype(np.float32) * (1.0 - alpha) + lid * alpha
        patch[:] = np.clip(out + 0.5, 0, 255).astype(np.uint8)

    # ---------------------------------------------------------------- frames

    @staticmethod
    def _q(value: float, steps: int, lo: float = 0.0, hi: float = 1.0) -> int:
        return round(min(hi, max(lo, value)) * steps)

    def _face(self, state: FaceState) -> np.ndarray:
        """The frame without head motion: the base with the mouth and eye patches pasted in."""
        frame = self._base.copy()
        m = state.mouth
        key = (
            self._q(m.open, _Q_OPEN), self._q(m.width, _Q_SHAPE, -1.0), self._q(m.round, _Q_SHAPE),
            self._q(m.press, _Q_SHAPE), self._q(m.tuck, _Q_SHAPE), self._q(m.tongue, _Q_SHAPE),
            self._q(m.teeth, _Q_SHAPE), self._q(state.smile, _Q_SHAPE),
        )  # fmt: skip
        reg = self._mouth
        # cv2.copyTo writes through the view (50x faster than a masked numpy copy).
        cv2.copyTo(self._mouth_patch(key), reg.cover, frame[reg.y0 : reg.y1, reg.x0 : reg.x1])
        eye_key = (
            self._q(state.eye_close_left, _Q_LID), self._q(state.eye_close_right, _Q_LID),
            self._q(state.brow, _Q_SHAPE, -1.0),
        )  # fmt: skip
        if eye_key != (0, 0, 0):
            reg = self._eyes
            cv2.copyTo(self._eye_patch(eye_key), reg.cover, frame[reg.y0 : reg.y1, reg.x0 : reg.x1])
        return frame

    def _head_affine(self, state: FaceState) -> np.ndarray | None:
        """Inverse (dst -> src) 2x3 affine of the head motion, None when the head is at rest."""
        yaw = max(-MAX_YAW, min(MAX_YAW, state.head_yaw))
        pitch = max(-MAX_PITCH, min(MAX_PITCH, state.head_pitch))
        roll = max(-MAX_ROLL, min(MAX_ROLL, state.head_roll))
        D = self._eye_distance
        # A turn shows as a shift of the face with a slight squeeze; breathing lifts the head.
        shift = self._ex * math.sin(math.radians(yaw)) * 0.3 * D - self._ey * (
            math.sin(math.radians(pitch)) * 0.3 * D + state.breath * 0.02 * D
        )
        roll *= 0.7  # a flat photo rolled fully looks like a rotated picture, not a tilted head
        squeeze_x = 1.0 - 0.12 * abs(math.sin(math.radians(yaw)))
        squeeze_y = 1.0 - 0.10 * abs(math.sin(math.radians(pitch)))
        if abs(shift[0]) < 0.05 and abs(shift[1]) < 0.05 and abs(roll) < 0.01:
            return None
        c, s = math.cos(math.radians(roll)), math.sin(math.radians(roll))
        rot = np.array([[c, -s], [s, c]])
        frame = np.stack([self._ex, self._ey], axis=1)  # columns: face axes
        scale = frame @ np.diag([squeeze_x, squeeze_y]) @ frame.T
        linear = rot @ scale
        pivot = self._pivot
        forward = np.hstack([linear, (pivot + shift - linear @ pivot)[:, None]])
        inv = cv2.invertAffineTransform(forward.astype(np.float64))
        return np.asarray(inv)

    def _apply_head(self, frame: np.ndarray, inv: np.ndarray, extra: np.ndarray | None = None) -> None:
        x0, y0, x1, y1 = self._head_roi
        gx, gy, wgt = self._head_gx, self._head_gy, self._head_w
        dx = wgt * ((inv[0, 0] - 1.0) * gx + inv[0, 1] * gy + inv[0, 2])
        dy = wgt * (inv[1, 0] * gx + (inv[1, 1] - 1.0) * gy + inv[1, 2])
        step = self._head_step
        size = (dx.shape[1] - 1) * step + 1, (dx.shape[0] - 1) * step + 1
        # Interpolate the coarse grid (corner-aligned) up to pixel resolution.
        fine_dx = cv2.resize(dx, size, interpolation=cv2.INTER_LINEAR)[: y1 - y0, : x1 - x0]
        fine_dy = cv2.resize(dy, size, interpolation=cv2.INTER_LINEAR)[: y1 - y0, : x1 - x0]
        mapx = cv2.add(self._head_xs, fine_dx)
        mapy = cv2.add(self._head_ys, fine_dy)
        frame[y0:y1, x0:x1] = cv2.remap(frame, mapx, mapy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        if extra is not None:
            extra[y0:y1, x0:x1] = cv2.remap(extra, mapx, mapy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

    def render(self, state: FaceState) -> np.ndarray:
        frame = self._face(state)
        inv = self._head_affine(state)
        if inv is not None:
            self._apply_head(frame, inv)
        return frame

    def render_rgba(self, state: FaceState) -> np.ndarray:
        frame = self._face(state)
        alpha = self._matte_u8.copy()
        inv = self._head_affine(state)
        if inv is not None:
            self._apply_head(frame, inv, alpha)
        return np.dstack([frame, alpha])

    # ---------------------------------------------------------------- introspection

    @property
    def eye_distance(self) -> float:
        """Outer eye-corner distance of the face in the frame, px."""
        return self._eye_distance

    @property
    def face_landmarks(self) -> np.ndarray:
        """The face mesh of the base frame: float (478, 2) px (read-only view)."""
        v = self._v[: self._n_landmarks]
        v.flags.writeable = False
        return v

    def regions(self) -> dict[str, tuple[int, int, int, int]]:
        """ROIs (x0, y0, x1, y1) that mouth, eyes and head motion may change."""
        out = {"mouth": (self._mouth.x0, self._mouth.y0, self._mouth.x1, self._mouth.y1)}
        out["eyes"] = (self._eyes.x0, self._eyes.y0, self._eyes.x1, self._eyes.y1)
        out["head"] = self._head_roi
        return out


def _read_json(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise PhotoAvatarLoadError(f"{path}: missing") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PhotoAvatarLoadError(f"{path}: unreadable ({exc})") from exc
    if not isinstance(data, dict):
        raise PhotoAvatarLoadError(f"{path}: expected a JSON object")
    return data


def _read_image(path: Path, flags: int) -> np.ndarray:
    data = np.fromfile(str(path), dtype=np.uint8) if path.is_file() else None
    if data is None:
        raise PhotoAvatarLoadError(f"{path}: missing")
    image = cv2.imdecode(data, flags)
    if image is None:
        raise PhotoAvatarLoadError(f"{path}: not a readable image")
    return np.asarray(image)


def load_photo_avatar(path: Path, width: int, height: int) -> PhotoAvatar:
    """Load the photo avatar in directory ``path`` (built by ``photo_build``) for a
    ``width`` x ``height`` stage. The framed portrait is scaled to cover the stage, keeping the
    eyes where the framing put them. Raises ``PhotoAvatarLoadError`` naming a bad file."""
    path = Path(path)
    meta = _read_json(path / "avatar.json")
    if meta.get("kind") != "photo":
        raise PhotoAvatarLoadError(f"{path / 'avatar.json'}: kind is {meta.get('kind')!r}, not 'photo'")
    image_bgr = _read_image(path / str(meta.get("image", "portrait.jpg")), cv2.IMREAD_COLOR)
    image = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB)
    ch, cw = image.shape[:2]
    matte_path = path / str(meta.get("matte", "matte.png"))
    matte: np.ndarray = (
        _read_image(matte_path, cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255.0
        if matte_path.exists()
        else np.ones((ch, cw), np.float32)
    )
    if matte.shape != (ch, cw):
        matte = np.asarray(cv2.resize(matte, (cw, ch), interpolation=cv2.INTER_LINEAR))
    mesh_file = path / str(meta.get("mesh", "mesh.json"))
    mesh = _read_json(mesh_file)
    try:
        vertices = np.asarray(mesh["vertices"], dtype=np.float64) * (cw, ch)
        triangles = np.asarray(mesh["triangles"], dtype=np.int64)
        count = int(mesh["landmark_count"])  # type: ignore[call-overload]
        if vertices.ndim != 2 or vertices.shape[1] != 2 or count < T.NUM_LANDMARKS or count > len(vertices):
            raise ValueError("vertices")
        if triangles.ndim != 2 or triangles.shape[1] != 3 or triangles.min() < 0 or triangles.max() >= len(vertices):
            raise ValueError("triangles")
    except (KeyError, TypeError, ValueError) as exc:
        raise PhotoAvatarLoadError(f"{mesh_file}: malformed mesh ({exc})") from exc

    # Cover the stage; keep the eye midpoint's horizontal centre and its height in the frame.
    scale = max(width / cw, height / ch)
    eyes = (vertices[T.LEFT_EYE_OUTER] + vertices[T.RIGHT_EYE_OUTER]) / 2.0 * scale
    ox = min(max(eyes[0] - width / 2.0, 0.0), cw * scale - width)
    oy = min(max(eyes[1] - 0.40 * height, 0.0), ch * scale - height)
    affine = np.array([[scale, 0.0, -ox], [0.0, scale, -oy]])
    interp = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_CUBIC
    frame = cv2.warpAffine(image, affine, (width, height), flags=interp, borderMode=cv2.BORDER_REPLICATE)
    alpha = cv2.warpAffine(matte, affine, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    verts = vertices * scale - (ox, oy)
    name = str(meta.get("name") or path.name)
    return PhotoAvatar(name, frame, alpha, verts, count, triangles, title=str(meta.get("title") or name))
