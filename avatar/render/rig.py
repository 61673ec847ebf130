"""The vector description of an illustrated avatar (``assets/avatars/<name>/rig.yaml``).

Coordinates are normalised: the figure lives in a unit square, ``x`` from 0 (left edge) to 1
(right edge) and ``y`` from 0 (top) to 1 (bottom), so one rig renders at any output size.
Shapes may extend outside the square (shoulders, the bottom of the jacket): what falls outside
the output is clipped. The renderer fits the square to the output's shorter side, centred
horizontally and resting on the bottom edge.

Top-level keys:

``name``, ``title``
    The catalogue name (must equal the directory name) and a human title.
``palette``
    Named colours (``"#rrggbb"`` or ``"#rrggbbaa"``); any colour field may name one.
``background``
    ``top`` and ``bottom`` colours of a vertical gradient, optional ``glow``
    (``center``, ``radius``, ``color``, ``strength``): a soft light behind the figure.
``motion``
    ``pivot`` (the point the head rolls about), ``parallax`` (normalised shift per degree of
    yaw or pitch at depth 1), ``breath`` (shoulder rise at breath 1), ``head_breath`` (fraction of
    that rise the head follows), ``feature_depth`` (parallax depth of eyes, brows and mouth).
``layers``
    Painted in order. Each has ``name``, ``follows`` (``body``: moves with breath; ``head``:
    moves, rolls and shifts by ``depth`` with the head), ``depth``, ``above_features`` (painted
    over eyes, brows and mouth: front hair; only allowed at the end of the list) and ``shapes``.
    A shape has exactly one of ``path`` (SVG path data with absolute ``M L H V C S Q Z``
    commands) or ``ellipse`` (``[cx, cy, rx, ry]``, optional ``angle`` in degrees), then
    ``fill`` (a colour or a gradient ``{linear: [x0, y0, x1, y1] | radial: [cx, cy, r] or
    [cx, cy, rx, ry], stops: [[offset, colour], ...]}``) and/or ``stroke``
    (``{color, width}``), ``opacity``, ``blur`` (feather radius, normalised), ``clip`` (the name
    of an earlier shape of the same layer to stay inside), ``symmetric`` (the path is the left
    half; it is closed by its mirror image about ``x = 0.5``) and ``mirror`` (paint a mirrored
    copy too).
``eyes``, ``brows``, ``mouth``
    The animated features, described by parameters (see ``EyeSpec``, ``BrowSpec``,
    ``MouthSpec``); positions are those of the feature on the viewer's left, the other side is
    mirrored about ``x = 0.5``.

Every error names the file and the field, e.g.
``assets/avatars/anna/rig.yaml: layers[2].shapes[4].fill: unknown colour 'skn'``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml

RGBA = tuple[float, float, float, float]
"""A colour: straight (not premultiplied) sRGB components and alpha, each 0..1."""

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")

_CUBIC_STEPS = 20
_QUAD_STEPS = 14
_ELLIPSE_STEPS = 72


class RigError(ValueError):
    """A rig file is missing, unreadable or invalid; the message names the file and the field."""


@dataclass(frozen=True)
class Gradient:
    """A linear (``coords = x0, y0, x1, y1``) or radial (``cx, cy, rx, ry``) colour ramp."""

    kind: Literal["linear", "radial"]
    coords: tuple[float, float, float, float]
    stops: tuple[tuple[float, RGBA], ...]

    def mirrored(self) -> Gradient:
        c = self.coords
        if self.kind == "linear":
            return Gradient(self.kind, (1.0 - c[0], c[1], 1.0 - c[2], c[3]), self.stops)
        return Gradient(self.kind, (1.0 - c[0], c[1], c[2], c[3]), self.stops)


Paint = RGBA | Gradient


@dataclass(frozen=True)
class Stroke:
    color: RGBA
    width: float


@dataclass(frozen=True, eq=False)
class Shape:
    """One filled and/or stroked outline. ``paths`` are polylines (``(n, 2)`` float arrays in
    normalised coordinates) already flattened from the curves; ``closed`` tells whether a stroke
    returns to its start."""

    name: str | None
    paths: tuple[np.ndarray, ...]
    closed: bool
    fill: Paint | None
    stroke: Stroke | None
    opacity: float
    blur: float
    clip: str | None
    mirror: bool

    def bounds(self) -> tuple[float, float, float, float]:
        """``(x0, y0, x1, y1)`` of the outline including its mirror copy, stroke and feather."""
        pts = np.concatenate(self.paths)
        if self.mirror:
            pts = np.concatenate([pts, mirror_points(pts)])
        pad = self.blur * 3.0 + (self.stroke.width if self.stroke else 0.0)
        x0, y0 = pts.min(axis=0)
        x1, y1 = pts.max(axis=0)
        return (float(x0) - pad, float(y0) - pad, float(x1) + pad, float(y1) + pad)


@dataclass(frozen=True)
class Layer:
    name: str
    follows: Literal["body", "head"]
    depth: float
    above_features: bool
    shapes: tuple[Shape, ...]


@dataclass(frozen=True)
class Glow:
    center: tuple[float, float]
    radius: float
    color: RGBA
    strength: float


@dataclass(frozen=True)
class Background:
    top: RGBA
    bottom: RGBA
    glow: Glow | None


@dataclass(frozen=True)
class Motion:
    pivot: tuple[float, float]
    parallax: float
    breath: float
    head_breath: float
    feature_depth: float


@dataclass(frozen=True)
class EyeSpec:
    """The eye on the viewer's left (the avatar's right eye); the other is its mirror image.

    Lengths other than ``half_width`` are in half-widths of the eye opening."""

    center: tuple[float, float]
    half_width: float
    upper: float  # arch of the upper lid
    lower: float  # sag of the lower lid
    tilt: float  # the outer corner sits this much higher than the inner one
    iris_radius: float
    pupil: float  # fraction of the iris radius
    gaze_travel: tuple[float, float]
    sclera: RGBA
    sclera_shadow: RGBA
    iris: RGBA
    iris_rim: RGBA
    iris_light: RGBA
    pupil_color: RGBA
    lash: RGBA
    lash_width: float
    flick: float  # 0 .. 1, a lash wing at the outer corner
    lower_lash: RGBA
    crease: RGBA
    lid: RGBA | None  # the eyelid's colour; None: the skin under the eye, sampled at load


@dataclass(frozen=True)
class BrowSpec:
    """The brow on the viewer's left; ``points`` run inner end, arch, outer end."""

    points: tuple[tuple[float, float], tuple[float, float], tuple[float, float]]
    thickness: tuple[float, float, float]
    color: RGBA
    lift: float  # normalised rise at brow = 1


@dataclass(frozen=True)
class MouthSpec:
    center: tuple[float, float]
    half_width: float
    upper_lip: float  # thickness of the upper lip at the bow, normalised
    lower_lip: float
    max_open: float  # lip gap at open = 1, normalised
    upper_lip_color: RGBA
    lower_lip_color: RGBA
    lip_highlight: RGBA
    lip_line: RGBA
    interior: RGBA
    teeth: RGBA
    teeth_shadow: RGBA
    tongue: RGBA
    skin_shadow: RGBA


@dataclass(frozen=True)
class Rig:
    name: str
    title: str
    path: Path
    background: Background
    motion: Motion
    layers: tuple[Layer, ...]
    eyes: EyeSpec
    brows: BrowSpec
    mouth: MouthSpec


def mirror_points(pts: np.ndarray) -> np.ndarray:
    """Mirror normalised points about the vertical centre line ``x = 0.5``."""
    out = pts.copy()
    out[:, 0] = 1.0 - out[:, 0]
    return out


# ---------------------------------------------------------------------------------------------
# Loading


def load_rig(path: Path) -> Rig:
    """Read and validate a rig file. Raises ``RigError`` naming the file and field on any problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RigError(f"{path}: cannot read rig: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RigError(f"{path}: not valid YAML: {exc}") from exc
    return parse_rig(data, path)


def parse_rig(data: Any, path: Path) -> Rig:
    """Validate an already parsed YAML document; ``path`` is only used in messages."""
    root = _Node(path, "", data).mapping()
    palette = _parse_palette(root.get("palette", required=False), path)
    ctx = _Ctx(path, palette)
    name = root.get("name").string()
    if not NAME_PATTERN.match(name):
        raise RigError(f"{path}: name: {name!r} must be lowercase letters, digits, '-' or '_'")
    title = root.get("title", required=False).string(default=name)
    layers_node = root.get("layers")
    layers = tuple(_parse_layer(item, ctx) for item in layers_node.items())
    if not layers:
        raise RigError(f"{path}: layers: at least one layer is required")
    seen_above = False
    for i, layer in enumerate(layers):
        if layer.above_features:
            seen_above = True
        elif seen_above:
            raise RigError(
                f"{path}: layers[{i}].above_features: layers painted under the features must come "
                "before every layer painted above them"
            )
    root.reject_unknown(
        {"name", "title", "palette", "background", "motion", "layers", "eyes", "brows", "mouth"}
    )
    return Rig(
        name=name,
        title=title,
        path=path,
        background=_parse_background(root.get("background"), ctx),
        motion=_parse_motion(root.get("motion"), ctx),
        layers=layers,
        eyes=_parse_eyes(root.get("eyes"), ctx),
        brows=_parse_brows(root.get("brows"), ctx),
        mouth=_parse_mouth(root.get("mouth"), ctx),
    )


class _Node:
    """A YAML value with its dotted location, so every check can say where it failed."""

    def __init__(self, path: Path, where: str, value: Any) -> None:
        self.path = path
        self.where = where
        self.value = value

    def fail(self, message: str) -> RigError:
        return RigError(f"{self.path}: {self.where or '<document>'}: {message}")

    def mapping(self) -> _Node:
        if not isinstance(self.value, Mapping):
            raise self.fail(f"expected a mapping, got {_describe(self.value)}")
        return self

    def get(self, key: str, *, required: bool = True) -> _Node:
        self.mapping()
        where = f"{self.where}.{key}" if self.where else key
        if key not in self.value:
            if required:
                raise RigError(f"{self.path}: {where}: missing")
            return _Node(self.path, where, None)
        return _Node(self.path, where, self.value[key])

    def has(self, key: str) -> bool:
        return isinstance(self.value, Mapping) and key in self.value

    def reject_unknown(self, known: set[str]) -> None:
        for key in self.mapping().value:
            if key not in known:
                where = f"{self.where}.{key}" if self.where else str(key)
                raise RigError(f"{self.path}: {where}: unknown field (expected one of {sorted(known)})")

    def items(self) -> list[_Node]:
        if not isinstance(self.value, list):
            raise self.fail(f"expected a list, got {_describe(self.value)}")
        return [_Node(self.path, f"{self.where}[{i}]", v) for i, v in enumerate(self.value)]

    def string(self, default: str | None = None) -> str:
        if self.value is None and default is not None:
            return default
        if not isinstance(self.value, str) or not self.value:
            raise self.fail(f"expected a non-empty string, got {_describe(self.value)}")
        return self.value

    def number(
        self, default: float | None = None, *, lo: float | None = None, hi: float | None = None
    ) -> float:
        value = self.value
        if value is None and default is not None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise self.fail(f"expected a number, got {_describe(value)}")
        if lo is not None and value < lo:
            raise self.fail(f"{value} is below the minimum {lo}")
        if hi is not None and value > hi:
            raise self.fail(f"{value} is above the maximum {hi}")
        return float(value)

    def boolean(self, default: bool) -> bool:
        if self.value is None:
            return default
        if not isinstance(self.value, bool):
            raise self.fail(f"expected true or false, got {_describe(self.value)}")
        return self.value

    def numbers(self, count: int | tuple[int, ...]) -> tuple[float, ...]:
        counts = (count,) if isinstance(count, int) else count
        items = self.items()
        if len(items) not in counts:
            wanted = " or ".join(str(c) for c in counts)
            raise self.fail(f"expected {wanted} numbers, got {len(items)}")
        return tuple(item.number() for item in items)

    def point(self) -> tuple[float, float]:
        x, y = self.numbers(2)
        return (x, y)


@dataclass(frozen=True)
class _Ctx:
    path: Path
    palette: dict[str, RGBA]

    def color(self, node: _Node, default: RGBA | None = None) -> RGBA:
        if node.value is None and default is not None:
            return default
        if not isinstance(node.value, str):
            raise node.fail(f"expected a colour ('#rrggbb' or a palette name), got {_describe(node.value)}")
        text = node.value.strip()
        if text in self.palette:
            return self.palette[text]
        parsed = _parse_hex(text)
        if parsed is None:
            raise node.fail(f"unknown colour {text!r} (not '#rrggbb', '#rrggbbaa' or a palette name)")
        return parsed


def _describe(value: Any) -> str:
    if value is None:
        return "nothing"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _parse_hex(text: str) -> RGBA | None:
    if not re.fullmatch(r"#[0-9a-fA-F]{6}([0-9a-fA-F]{2})?", text):
        return None
    comps = [int(text[i : i + 2], 16) / 255.0 for i in range(1, len(text), 2)]
    if len(comps) == 3:
        comps.append(1.0)
    return (comps[0], comps[1], comps[2], comps[3])


def _parse_palette(node: _Node, path: Path) -> dict[str, RGBA]:
    if node.value is None:
        return {}
    palette: dict[str, RGBA] = {}
    for key in node.mapping().value:
        entry = node.get(str(key))
        if not isinstance(entry.value, str) or (parsed := _parse_hex(entry.value.strip())) is None:
            raise entry.fail(f"expected '#rrggbb' or '#rrggbbaa', got {_describe(entry.value)}")
        palette[str(key)] = parsed
    return palette


def _parse_background(node: _Node, ctx: _Ctx) -> Background:
    node.reject_unknown({"top", "bottom", "glow"})
    glow: Glow | None = None
    glow_node = node.get("glow", required=False)
    if glow_node.value is not None:
        glow_node.reject_unknown({"center", "radius", "color", "strength"})
        glow = Glow(
            center=glow_node.get("center").point(),
            radius=glow_node.get("radius").number(lo=1e-3),
            color=ctx.color(glow_node.get("color")),
            strength=glow_node.get("strength").number(lo=0.0, hi=1.0),
        )
    return Background(ctx.color(node.get("top")), ctx.color(node.get("bottom")), glow)


def _parse_motion(node: _Node, ctx: _Ctx) -> Motion:
    node.reject_unknown({"pivot", "parallax", "breath", "head_breath", "feature_depth"})
    return Motion(
        pivot=node.get("pivot").point(),
        parallax=node.get("parallax").number(lo=0.0, hi=0.02),
        breath=node.get("breath").number(lo=0.0, hi=0.05),
        head_breath=node.get("head_breath", required=False).number(0.5, lo=0.0, hi=1.0),
        feature_depth=node.get("feature_depth", required=False).number(1.0, lo=-2.0, hi=2.0),
    )


def _parse_layer(node: _Node, ctx: _Ctx) -> Layer:
    node.reject_unknown({"name", "follows", "depth", "above_features", "shapes"})
    follows = node.get("follows").string()
    if follows not in ("body", "head"):
        raise node.get("follows").fail(f"expected 'body' or 'head', got {follows!r}")
    shapes: list[Shape] = []
    names: set[str] = set()
    for item in node.get("shapes").items():
        shape = _parse_shape(item, ctx, names)
        if shape.name is not None:
            if shape.name in names:
                raise item.get("name").fail(f"duplicate shape name {shape.name!r} in this layer")
            names.add(shape.name)
        shapes.append(shape)
    return Layer(
        name=node.get("name").string(),
        follows="body" if follows == "body" else "head",
        depth=node.get("depth", required=False).number(0.0, lo=-2.0, hi=2.0),
        above_features=node.get("above_features", required=False).boolean(False),
        shapes=tuple(shapes),
    )


def _parse_shape(node: _Node, ctx: _Ctx, earlier: set[str]) -> Shape:
    node.reject_unknown(
        {
            "name",
            "path",
            "ellipse",
            "angle",
            "fill",
            "stroke",
            "opacity",
            "blur",
            "clip",
            "symmetric",
            "mirror",
        }
    )
    name = node.get("name", required=False)
    shape_name = name.string() if name.value is not None else None
    has_path, has_ellipse = node.has("path"), node.has("ellipse")
    if has_path == has_ellipse:
        raise node.fail("a shape needs exactly one of 'path' or 'ellipse'")
    if has_path:
        path_node = node.get("path")
        paths, closed = parse_path_data(path_node.string(), path_node)
        if node.get("angle", required=False).value is not None:
            raise node.get("angle").fail("'angle' only applies to an ellipse")
    else:
        cx, cy, rx, ry = node.get("ellipse").numbers(4)
        if rx <= 0 or ry <= 0:
            raise node.get("ellipse").fail("radii must be positive")
        angle = node.get("angle", required=False).number(0.0)
        paths, closed = [ellipse_points(cx, cy, rx, ry, angle)], True
    if node.get("symmetric", required=False).boolean(False):
        paths = [np.concatenate([p, mirror_points(p)[::-1]]) for p in paths]
        closed = True
    fill_node = node.get("fill", required=False)
    fill = _parse_paint(fill_node, ctx) if fill_node.value is not None else None
    stroke: Stroke | None = None
    stroke_node = node.get("stroke", required=False)
    if stroke_node.value is not None:
        stroke_node.reject_unknown({"color", "width"})
        stroke = Stroke(ctx.color(stroke_node.get("color")), stroke_node.get("width").number(lo=1e-4, hi=0.2))
    if fill is None and stroke is None:
        raise node.fail("a shape needs a 'fill', a 'stroke' or both")
    clip_node = node.get("clip", required=False)
    clip = clip_node.string() if clip_node.value is not None else None
    if clip is not None and clip not in earlier:
        raise clip_node.fail(f"no earlier shape named {clip!r} in this layer")
    for p in paths:
        if len(p) < 2 or (fill is not None and len(p) < 3):
            raise node.fail("the outline has too few points")
    return Shape(
        name=shape_name,
        paths=tuple(paths),
        closed=closed,
        fill=fill,
        stroke=stroke,
        opacity=node.get("opacity", required=False).number(1.0, lo=0.0, hi=1.0),
        blur=node.get("blur", required=False).number(0.0, lo=0.0, hi=0.2),
        clip=clip,
        mirror=node.get("mirror", required=False).boolean(False),
    )


def _parse_paint(node: _Node, ctx: _Ctx) -> Paint:
    if isinstance(node.value, str):
        return ctx.color(node)
    node.mapping().reject_unknown({"linear", "radial", "stops"})
    if node.has("linear") == node.has("radial"):
        raise node.fail("a gradient needs exactly one of 'linear' or 'radial'")
    if node.has("linear"):
        x0, y0, x1, y1 = node.get("linear").numbers(4)
        if (x0, y0) == (x1, y1):
            raise node.get("linear").fail("start and end points must differ")
        kind: Literal["linear", "radial"] = "linear"
        coords = (x0, y0, x1, y1)
    else:
        nums = node.get("radial").numbers((3, 4))
        rx = nums[2]
        ry = nums[3] if len(nums) == 4 else rx
        if rx <= 0 or ry <= 0:
            raise node.get("radial").fail("radii must be positive")
        kind = "radial"
        coords = (nums[0], nums[1], rx, ry)
    stops: list[tuple[float, RGBA]] = []
    for item in node.get("stops").items():
        pair = item.items()
        if len(pair) != 2:
            raise item.fail("a stop is [offset, colour]")
        offset = pair[0].number(lo=0.0, hi=1.0)
        if stops and offset < stops[-1][0]:
            raise pair[0].fail("stop offsets must not decrease")
        stops.append((offset, ctx.color(pair[1])))
    if len(stops) < 2:
        raise node.get("stops").fail("a gradient needs at least two stops")
    return Gradient(kind, coords, tuple(stops))


def _parse_eyes(node: _Node, ctx: _Ctx) -> EyeSpec:
    fields = {
        "center", "half_width", "upper", "lower", "tilt", "iris_radius", "pupil", "gaze_travel",
        "sclera", "sclera_shadow", "iris", "iris_rim", "iris_light", "pupil_color", "lash",
        "lash_width", "flick", "lower_lash", "crease", "lid",
    }  # fmt: skip
    node.reject_unknown(fields)
    gx, gy = node.get("gaze_travel").numbers(2)
    return EyeSpec(
        center=node.get("center").point(),
        half_width=node.get("half_width").number(lo=0.005, hi=0.2),
        upper=node.get("upper").number(lo=0.1, hi=1.5),
        lower=node.get("lower").number(lo=0.0, hi=1.5),
        tilt=node.get("tilt", required=False).number(0.0, lo=-0.5, hi=0.5),
        iris_radius=node.get("iris_radius").number(lo=0.1, hi=1.0),
        pupil=node.get("pupil").number(lo=0.1, hi=0.9),
        gaze_travel=(gx, gy),
        sclera=ctx.color(node.get("sclera")),
        sclera_shadow=ctx.color(node.get("sclera_shadow")),
        iris=ctx.color(node.get("iris")),
        iris_rim=ctx.color(node.get("iris_rim")),
        iris_light=ctx.color(node.get("iris_light")),
        pupil_color=ctx.color(node.get("pupil_color")),
        lash=ctx.color(node.get("lash")),
        lash_width=node.get("lash_width").number(lo=0.01, hi=0.6),
        flick=node.get("flick", required=False).number(0.0, lo=0.0, hi=1.0),
        lower_lash=ctx.color(node.get("lower_lash")),
        crease=ctx.color(node.get("crease")),
        lid=ctx.color(node.get("lid")) if node.get("lid", required=False).value is not None else None,
    )


def _parse_brows(node: _Node, ctx: _Ctx) -> BrowSpec:
    node.reject_unknown({"inner", "arch", "outer", "thickness", "color", "lift"})
    t0, t1, t2 = node.get("thickness").numbers(3)
    for t in (t0, t1, t2):
        if t < 0 or t > 0.05:
            raise node.get("thickness").fail("each thickness must lie in 0 .. 0.05")
    return BrowSpec(
        points=(node.get("inner").point(), node.get("arch").point(), node.get("outer").point()),
        thickness=(t0, t1, t2),
        color=ctx.color(node.get("color")),
        lift=node.get("lift").number(lo=0.0, hi=0.05),
    )


def _parse_mouth(node: _Node, ctx: _Ctx) -> MouthSpec:
    fields = {
        "center", "half_width", "upper_lip", "lower_lip", "max_open", "upper_lip_color",
        "lower_lip_color", "lip_highlight", "lip_line", "interior", "teeth", "teeth_shadow",
        "tongue", "skin_shadow",
    }  # fmt: skip
    node.reject_unknown(fields)
    return MouthSpec(
        center=node.get("center").point(),
        half_width=node.get("half_width").number(lo=0.01, hi=0.2),
        upper_lip=node.get("upper_lip").number(lo=0.002, hi=0.05),
        lower_lip=node.get("lower_lip").number(lo=0.002, hi=0.05),
        max_open=node.get("max_open").number(lo=0.005, hi=0.15),
        upper_lip_color=ctx.color(node.get("upper_lip_color")),
        lower_lip_color=ctx.color(node.get("lower_lip_color")),
        lip_highlight=ctx.color(node.get("lip_highlight")),
        lip_line=ctx.color(node.get("lip_line")),
        interior=ctx.color(node.get("interior")),
        teeth=ctx.color(node.get("teeth")),
        teeth_shadow=ctx.color(node.get("teeth_shadow")),
        tongue=ctx.color(node.get("tongue")),
        skin_shadow=ctx.color(node.get("skin_shadow")),
    )


# ---------------------------------------------------------------------------------------------
# Geometry


def ellipse_points(cx: float, cy: float, rx: float, ry: float, angle_deg: float = 0.0) -> np.ndarray:
    t = np.linspace(0.0, 2.0 * math.pi, _ELLIPSE_STEPS, endpoint=False)
    x, y = rx * np.cos(t), ry * np.sin(t)
    a = math.radians(angle_deg)
    ca, sa = math.cos(a), math.sin(a)
    return np.stack([cx + x * ca - y * sa, cy + x * sa + y * ca], axis=1)


def _bernstein(steps: int) -> np.ndarray:
    t = np.linspace(0.0, 1.0, steps + 1)
    s = 1.0 - t
    return np.stack([s * s * s, 3 * s * s * t, 3 * s * t * t, t * t * t], axis=1)


# Constant tables (never mutated): animated features flatten curves every frame they change.
_BERNSTEIN = {steps: _bernstein(steps) for steps in range(1, 41)}


Point = Sequence[float] | np.ndarray


def cubic_points(p0: Point, p1: Point, p2: Point, p3: Point, steps: int = _CUBIC_STEPS) -> np.ndarray:
    """Points of a cubic Bézier from ``p0`` to ``p3`` inclusive, ``steps + 1`` of them."""
    basis = _BERNSTEIN.get(steps)
    if basis is None:
        basis = _bernstein(steps)
    out: np.ndarray = basis @ np.array([p0, p1, p2, p3], dtype=np.float64)
    return out


_PATH_TOKEN = re.compile(r"\s*(?:([A-Za-z])|([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?))\s*,?")
_ARITY = {"M": 2, "L": 2, "H": 1, "V": 1, "C": 6, "S": 4, "Q": 4, "Z": 0}


def parse_path_data(data: str, node: _Node) -> tuple[list[np.ndarray], bool]:
    """Flatten SVG path data (absolute ``M L H V C S Q Z``) into polylines.

    Returns the subpaths and whether the (last) subpath was closed with ``Z``."""
    tokens: list[str | float] = []
    pos = 0
    while pos < len(data):
        m = _PATH_TOKEN.match(data, pos)
        if not m or m.end() == pos:
            if data[pos:].strip() == "":
                break
            raise node.fail(f"cannot read path data at {data[pos : pos + 12]!r}")
        pos = m.end()
        tokens.append(m.group(1) if m.group(1) else float(m.group(2)))
    subpaths: list[np.ndarray] = []
    current: list[np.ndarray] = []
    pen = np.zeros(2)
    last_ctrl: np.ndarray | None = None
    closed = False
    cmd: str | None = None
    i = 0

    def flush() -> None:
        if current:
            pts = np.concatenate(current)
            if len(pts) >= 2:
                subpaths.append(pts)
        current.clear()

    while i < len(tokens):
        tok = tokens[i]
        if isinstance(tok, str):
            if tok not in _ARITY:
                raise node.fail(f"unsupported path command {tok!r} (use absolute M L H V C S Q Z)")
            cmd = tok
            i += 1
            if cmd == "Z":
                if current:
                    current.append(current[0][:1].copy())
                    pen = current[0][0].copy()
                flush()
                closed = True
                last_ctrl = None
                continue
        elif cmd is None:
            raise node.fail("path data must start with a command (M)")
        if cmd is None or cmd == "Z":
            raise node.fail("numbers after Z need a command")
        n = _ARITY[cmd]
        args = tokens[i : i + n]
        if len(args) < n or any(isinstance(a, str) for a in args):
            raise node.fail(f"command {cmd} needs {n} numbers")
        vals = [float(a) for a in args]
        i += n
        if cmd == "M":
            flush()
            closed = False
            pen = np.array(vals)
            current.append(pen[None, :].copy())
            cmd = "L"  # further pairs after M are line-tos, as in SVG
            last_ctrl = None
            continue
        if not current:
            current.append(pen[None, :].copy())
        if cmd in ("L", "H", "V"):
            if cmd == "L":
                target = np.array(vals)
            elif cmd == "H":
                target = np.array([vals[0], pen[1]])
            else:
                target = np.array([pen[0], vals[0]])
            current.append(target[None, :])
            pen = target
            last_ctrl = None
        elif cmd in ("C", "S"):
            if cmd == "C":
                c1, c2, end = np.array(vals[0:2]), np.array(vals[2:4]), np.array(vals[4:6])
            else:
                c1 = 2 * pen - last_ctrl if last_ctrl is not None else pen.copy()
                c2, end = np.array(vals[0:2]), np.array(vals[2:4])
            current.append(cubic_points(pen, c1, c2, end)[1:])
            pen, last_ctrl = end, c2
        else:  # Q
            ctrl, end = np.array(vals[0:2]), np.array(vals[2:4])
            c1 = pen + (ctrl - pen) * (2.0 / 3.0)
            c2 = end + (ctrl - end) * (2.0 / 3.0)
            current.append(cubic_points(pen, c1, c2, end, _QUAD_STEPS)[1:])
            pen, last_ctrl = end, None
    flush()
    if not subpaths:
        raise node.fail("the path draws nothing")
    return subpaths, closed
