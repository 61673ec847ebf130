"""The illustrated renderer: output contract, which pixels each parameter moves, determinism."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from avatar.face_state import FaceState, MouthShape
from avatar.render.catalog import AvatarCatalog, default_assets_dir
from avatar.render.illustrated import IllustratedArt, IllustratedRenderer
from avatar.render.rig import load_rig

AVATARS = ("anna", "leo")
REST = FaceState()


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> AvatarCatalog:
    return AvatarCatalog(default_assets_dir(), tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module", params=AVATARS)
def renderer(request: pytest.FixtureRequest, catalog: AvatarCatalog) -> IllustratedRenderer:
    r = catalog.load(request.param, 512, 512)
    assert isinstance(r, IllustratedRenderer)
    return r


def changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mask of pixels that differ (any channel)."""
    return np.any(a != b, axis=-1)


def box_of(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


def inside(mask: np.ndarray, box: tuple[int, int, int, int]) -> bool:
    """Whether every set pixel of ``mask`` lies inside ``box`` (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    outside = mask.copy()
    outside[y0:y1, x0:x1] = False
    return not outside.any()


@pytest.mark.parametrize("name", AVATARS)
@pytest.mark.parametrize("size", [(512, 512), (320, 240), (240, 320)])
def test_frame_shapes_and_types(catalog: AvatarCatalog, name: str, size: tuple[int, int]) -> None:
    width, height = size
    r = catalog.load(name, width, height)
    assert (r.name, r.width, r.height) == (name, width, height)
    rgb = r.render(REST)
    assert rgb.dtype == np.uint8 and rgb.shape == (height, width, 3)
    rgba = r.render_rgba(REST)
    assert rgba.dtype == np.uint8 and rgba.shape == (height, width, 4)
    # Not a blank frame: a figure stands out from the background.
    assert rgb.reshape(-1, 3).std(axis=0).max() > 20


def test_odd_or_tiny_sizes_are_refused() -> None:
    rig = load_rig(default_assets_dir() / "avatars" / "anna" / "rig.yaml")
    with pytest.raises(ValueError, match="width must be an even number"):
        IllustratedRenderer(rig, 511, 512)
    with pytest.raises(ValueError, match="height must be an even number"):
        IllustratedRenderer(rig, 512, 32)
    with pytest.raises(ValueError, match=r"64 \.\. 2048"):
        IllustratedRenderer(rig, 4096, 512)


def test_open_mouth_changes_only_the_mouth(renderer: IllustratedRenderer) -> None:
    closed = renderer.render(REST)
    opened = renderer.render(REST.with_mouth(MouthShape(open=1.0)))
    diff = changed(closed, opened)
    assert diff.sum() > 200  # clearly visible
    assert inside(diff, renderer.feature_regions()["mouth"])
    for y, x in ((0, 0), (0, -1), (-1, 0), (-1, -1), (10, 256)):
        assert not diff[y, x]


@pytest.mark.parametrize(
    ("base", "moved"),
    [
        (MouthShape(), MouthShape(open=0.6)),
        (MouthShape(open=0.3), MouthShape(open=0.3, width=1.0)),
        (MouthShape(open=0.3), MouthShape(open=0.3, width=-1.0)),
        (MouthShape(open=0.3), MouthShape(open=0.3, round=1.0)),
        (MouthShape(), MouthShape(press=1.0)),
        (MouthShape(), MouthShape(tuck=1.0)),
        (MouthShape(open=0.5), MouthShape(open=0.5, tongue=1.0)),
        (MouthShape(open=0.4), MouthShape(open=0.4, teeth=1.0)),
    ],
    ids=["open", "spread", "narrow", "round", "press", "tuck", "tongue", "teeth"],
)
def test_every_mouth_parameter_is_visible(
    renderer: IllustratedRenderer, base: MouthShape, moved: MouthShape
) -> None:
    a = renderer.render(REST.with_mouth(base))
    b = renderer.render(REST.with_mouth(moved))
    diff = changed(a, b)
    assert diff.sum() > 40, "the parameter should visibly change the mouth"
    assert inside(diff, renderer.feature_regions()["mouth"])


def test_tucked_lip_shows_the_upper_teeth(renderer: IllustratedRenderer) -> None:
    """'FF': the teeth rest on the lower lip, so near-white appears inside the mouth."""
    x0, y0, x1, y1 = renderer.feature_regions()["mouth"]
    rest = renderer.render(REST)[y0:y1, x0:x1].astype(int)
    tucked = renderer.render(REST.with_mouth(MouthShape(tuck=1.0)))[y0:y1, x0:x1].astype(int)

    def whitish(img: np.ndarray) -> int:
        return int(((img.min(axis=-1) > 225) & (img.max(axis=-1) - img.min(axis=-1) < 25)).sum())

    assert whitish(tucked) > whitish(rest) + 5


def test_closing_each_eye_changes_only_that_eye(renderer: IllustratedRenderer) -> None:
    regions = renderer.feature_regions()
    rest = renderer.render(REST)
    left = changed(rest, renderer.render(replace(REST, eye_close_left=1.0)))
    right = changed(rest, renderer.render(replace(REST, eye_close_right=1.0)))
    assert left.sum() > 100 and right.sum() > 100
    assert inside(left, regions["eye_left"]) and inside(right, regions["eye_right"])
    # The avatar's own left eye is on the viewer's right.
    assert box_of(left)[0] > renderer.width // 2 > box_of(right)[2]
    both = changed(rest, renderer.render(replace(REST, eye_close_left=1.0, eye_close_right=1.0)))
    assert np.array_equal(both, left | right)


def test_brows_and_gaze_stay_in_their_regions(renderer: IllustratedRenderer) -> None:
    regions = renderer.feature_regions()
    rest = renderer.render(REST)
    raised = changed(rest, renderer.render(replace(REST, brow=1.0)))
    assert raised.sum() > 50
    brow_area = raised.copy()
    for key in ("brow_left", "brow_right"):
        x0, y0, x1, y1 = regions[key]
        brow_area[y0:y1, x0:x1] = False
    assert not brow_area.any()
    # Raised brows sit higher than frowning ones.
    up = box_of(changed(rest, renderer.render(replace(REST, brow=1.0))))
    down = box_of(changed(rest, renderer.render(replace(REST, brow=-1.0))))
    assert up[1] < down[1]
    looked = changed(rest, renderer.render(replace(REST, gaze_x=1.0)))
    assert looked.sum() > 20
    eyes = looked.copy()
    for key in ("eye_left", "eye_right"):
        x0, y0, x1, y1 = regions[key]
        eyes[y0:y1, x0:x1] = False
    assert not eyes.any()


def test_smile_lifts_the_mouth_corners(renderer: IllustratedRenderer) -> None:
    diff = changed(renderer.render(replace(REST, smile=0.0)), renderer.render(replace(REST, smile=1.0)))
    assert diff.sum() > 40
    x0, y0, x1, y1 = renderer.feature_regions()["mouth"]
    outside = diff.copy()
    outside[y0:y1, x0:x1] = False
    for key in ("eye_left", "eye_right"):  # a smile narrows the eyes a little too
        ex0, ey0, ex1, ey1 = renderer.feature_regions()[key]
        outside[ey0:ey1, ex0:ex1] = False
    assert not outside.any()


def _centroid_x(mask: np.ndarray) -> float:
    return float(np.nonzero(mask)[1].mean())


def test_head_pose_moves_the_face(renderer: IllustratedRenderer) -> None:
    rest = renderer.render(REST)
    mouth_open = REST.with_mouth(MouthShape(open=1.0))
    # Yaw to the avatar's left shifts the face towards the viewer's right.
    open_rest = changed(
        renderer.render(replace(mouth_open, head_yaw=0.0)), renderer.render(replace(REST, head_yaw=0.0))
    )
    open_yawed = changed(
        renderer.render(replace(mouth_open, head_yaw=8.0)), renderer.render(replace(REST, head_yaw=8.0))
    )
    assert _centroid_x(open_yawed) > _centroid_x(open_rest) + 3
    # Pitch up moves the features up; roll tilts: both change the head, not the corners.
    for state in (replace(REST, head_pitch=6.0), replace(REST, head_roll=6.0)):
        diff = changed(rest, renderer.render(state))
        assert diff.sum() > 500
        assert not diff[0, 0] and not diff[0, -1]
    lifted = changed(rest, renderer.render(replace(REST, head_pitch=6.0)))
    assert box_of(lifted)[1] < renderer.height // 2


def test_breath_raises_the_shoulders(renderer: IllustratedRenderer) -> None:
    """The top edge of the shoulders, at a column away from the head, moves up a few pixels."""

    def shoulder_top(state: FaceState) -> int:
        column = renderer.render_rgba(state)[:, 100, 3]
        return int(np.argmax(column > 128))

    still = shoulder_top(replace(REST, breath=0.0))
    inhaled = shoulder_top(replace(REST, breath=1.0))
    assert still > renderer.height // 2
    assert 1 <= still - inhaled <= 6


def test_same_state_same_pixels(catalog: AvatarCatalog) -> None:
    state = FaceState(
        mouth=MouthShape(open=0.55, width=0.3, teeth=0.4),
        eye_close_left=0.3,
        brow=0.4,
        smile=0.6,
        head_yaw=3.3,
        head_pitch=-1.7,
        head_roll=2.1,
        breath=0.37,
        gaze_x=-0.4,
    )
    first = catalog.load("anna", 512, 512)
    a = first.render(state).copy()
    for other in (FaceState(), replace(state, head_yaw=-5.0)):
        first.render(other)  # caches in between must not disturb the result
    assert np.array_equal(a, first.render(state))
    # A fresh renderer (cold caches, freshly drawn art) gives the very same frame.
    rig = load_rig(default_assets_dir() / "avatars" / "anna" / "rig.yaml")
    assert np.array_equal(a, IllustratedRenderer(rig, 512, 512).render(state))


def test_frames_are_read_only(renderer: IllustratedRenderer) -> None:
    frame = renderer.render(REST)
    with pytest.raises(ValueError):
        frame[0, 0] = 0


def test_rgba_is_the_figure_alone(renderer: IllustratedRenderer) -> None:
    rgba = renderer.render_rgba(REST)
    alpha = rgba[:, :, 3]
    for y, x in ((0, 0), (0, -1), (5, 256), (-1, 0)):
        assert alpha[y, x] == 0
    x0, y0, x1, y1 = renderer.feature_regions()["mouth"]
    assert alpha[(y0 + y1) // 2 - 40, (x0 + x1) // 2] == 255  # the face, between nose and eyes
    assert alpha[y1 - 10, (x0 + x1) // 2] == 255
    # Anti-aliased outline: partial coverage exists, but only at edges.
    partial = (alpha > 0) & (alpha < 255)
    assert 100 < partial.sum() < 0.05 * alpha.size
    # Where the figure is opaque, the colours are those of the normal frame.
    rgb = renderer.render(REST)
    opaque = alpha == 255
    difference = np.abs(rgba[:, :, :3][opaque].astype(int) - rgb[opaque].astype(int))
    assert difference.max() <= 3 and difference.mean() < 0.05
    # Features animate in the overlay too.
    talking = renderer.render_rgba(REST.with_mouth(MouthShape(open=1.0)))
    assert inside(changed(rgba, talking), (x0, y0, x1, y1))


def test_extreme_and_odd_values_are_clamped(renderer: IllustratedRenderer) -> None:
    wild = FaceState(
        mouth=MouthShape(open=5.0, width=-9.0, round=3.0, press=-1.0, tuck=2.0, tongue=9.0, teeth=9.0),
        eye_close_left=-3.0,
        eye_close_right=7.0,
        brow=float("nan"),
        smile=4.0,
        head_yaw=400.0,
        head_pitch=-90.0,
        head_roll=float("inf"),
        breath=3.0,
        gaze_x=12.0,
        gaze_y=-12.0,
    )
    frame = renderer.render(wild)
    assert frame.shape == (512, 512, 3)
    clamped = FaceState(
        mouth=MouthShape(open=1.0, width=-1.0, round=1.0, press=0.0, tuck=1.0, tongue=1.0, teeth=1.0),
        eye_close_left=0.0,
        eye_close_right=1.0,
        brow=0.0,
        smile=1.0,
        head_yaw=25.0,
        head_pitch=-25.0,
        head_roll=0.0,
        breath=1.0,
        gaze_x=1.0,
        gaze_y=-1.0,
    )
    assert np.array_equal(frame, renderer.render(clamped))


def test_prepared_art_is_shared_and_checked(catalog: AvatarCatalog) -> None:
    rig = load_rig(default_assets_dir() / "avatars" / "leo" / "rig.yaml")
    art = IllustratedArt.prepare(rig, 256, 256)
    one, two = IllustratedRenderer(rig, 256, 256, art=art), IllustratedRenderer(rig, 256, 256, art=art)
    assert np.array_equal(one.render(REST), two.render(REST))
    with pytest.raises(ValueError, match="prepared art"):
        IllustratedRenderer(rig, 512, 512, art=art)


def test_rig_path_is_kept(renderer: IllustratedRenderer) -> None:
    assert renderer.rig.path == Path(default_assets_dir() / "avatars" / renderer.name / "rig.yaml")
