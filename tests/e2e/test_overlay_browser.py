"""The OBS overlay in a real headless Chromium against the real server process: the overlay page
sits in a transparent iframe over a page with a known background (a checkerboard, as a scene in
OBS would be), and a screenshot shows the background untouched away from the avatar, the face
opaque (the same over two different backgrounds), and no green anywhere (no chroma key)."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from avatar.face_state import FaceState
from avatar.render.catalog import AvatarCatalog, default_assets_dir
from tests.e2e.conftest import ServerProcess

pytestmark = pytest.mark.e2e

SIZE = 512
# Two scene backgrounds without green, so any green in a screenshot would come from the overlay.
BACKGROUNDS = (("#c0208f", "#2040c0"), ("#f0e0d0", "#302030"))
HOST_PAGE = """<!doctype html><html><head><style>
html, body {{ margin: 0; width: {size}px; height: {size}px; overflow: hidden; }}
body {{ background-color: {a}; background-image:
  linear-gradient(45deg, {b} 25%, transparent 25%, transparent 75%, {b} 75%),
  linear-gradient(45deg, {b} 25%, transparent 25%, transparent 75%, {b} 75%);
  background-size: 32px 32px; background-position: 0 0, 16px 16px; }}
iframe {{ position: absolute; left: 0; top: 0; width: {size}px; height: {size}px; border: 0; background: transparent; }}
</style></head><body><iframe id="overlay" allow="autoplay" src="{src}"></iframe></body></html>"""


def api(server: ServerProcess, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    request = urllib.request.Request(
        server.url + path,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {server.token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        return dict(json.load(resp))


def reference_matte(tmp: Path) -> tuple[np.ndarray, np.ndarray]:
    """The avatar's matte and colour at rest, rendered here with the server's renderer."""
    catalog = AvatarCatalog(default_assets_dir(), tmp / "catalog")
    rgba = catalog.load("anna", SIZE, SIZE).render_rgba(FaceState())
    return rgba[..., 3], rgba[..., :3]


def screenshot(page: Any) -> np.ndarray:
    png = page.screenshot(type="png")
    bgr = cv2.imdecode(np.frombuffer(png, dtype=np.uint8), cv2.IMREAD_COLOR)
    return np.asarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), dtype=np.int32)


def show_scene(page: Any, server: ServerProcess, src: str, colours: tuple[str, str]) -> Any:
    """Load the scene page with the overlay in it; returns the overlay's frame. The scene is
    served (by Playwright) from the server's own origin: the server allows framing by itself only
    (``frame_ancestors``), and OBS loads the overlay as a top-level page anyway."""
    url = f"{server.url}/__scene-{colours[0][1:]}.html"
    html = HOST_PAGE.format(size=SIZE, a=colours[0], b=colours[1], src=src)
    page.route(url, lambda route: route.fulfill(status=200, content_type="text/html", body=html))
    page.goto(url)
    handle = page.wait_for_selector("#overlay")
    frame = handle.content_frame()
    assert frame is not None
    return frame


@pytest.mark.parametrize("renderer", ["webgl", "2d"])
def test_overlay_true_alpha_over_a_scene(
    server: ServerProcess, browser: Any, artifacts: Path, tmp_path: Path, renderer: str
) -> None:
    stage = api(server, "POST", "/api/stages", {"avatar": "anna", "driver": "script"})
    src = f"{server.url}{stage['overlay_url']}&muted=1&size=30&color=ffee00" + ("&render=2d" if renderer == "2d" else "")
    alpha, colour = reference_matte(tmp_path)
    # Away from the avatar: outside its matte grown by 40 px (idle sway and breathing move it).
    away = cv2.dilate((alpha > 0).astype(np.uint8), np.ones((81, 81), np.uint8)) == 0
    # On the face: well inside the opaque matte, between the eyes and the chin.
    solid = cv2.erode((alpha == 255).astype(np.uint8), np.ones((31, 31), np.uint8)) > 0
    face = np.zeros_like(solid)
    face[190:290, 200:312] = True
    face &= solid
    assert away.sum() > 20_000 and face.sum() > 2_000

    page = browser.new_page(viewport={"width": SIZE, "height": SIZE})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        shots = []
        for colours in BACKGROUNDS:
            frame = show_scene(page, server, src, colours)
            frame.wait_for_function("() => Number(document.body.dataset.frames) > 15", timeout=30_000)
            used = frame.evaluate("() => document.body.dataset.renderer")
            if renderer == "webgl" and used != "webgl":
                pytest.skip("this Chromium offers no WebGL here (the page fell back to canvas 2D)")
            assert used == renderer
            scene = screenshot(page)
            frame.evaluate("() => { document.body.style.visibility = 'hidden'; }")
            background = screenshot(page)
            frame.evaluate("() => { document.body.style.visibility = ''; }")
            cv2.imwrite(str(artifacts / f"overlay-{renderer}-{colours[0][1:]}.png"), cv2.cvtColor(scene.astype(np.uint8), cv2.COLOR_RGB2BGR))
            shots.append((scene, background))

        for scene, background in shots:
            # The scene shows through untouched wherever the avatar is not.
            diff = np.abs(scene - background).max(axis=2)
            changed = away & (diff > 2)
            if changed.any():
                cv2.imwrite(str(artifacts / f"overlay-{renderer}-diff.png"), np.clip(diff * 20, 0, 255).astype(np.uint8))
            assert not changed.any(), (
                f"background changed away from the avatar at {int(changed.sum())} px (max {diff[away].max()}),"
                f" e.g. {np.argwhere(changed)[:5].tolist()}"
            )
            # The face is opaque: nothing of the scene shows through it.
            assert np.median(diff[face]) > 40
            assert np.abs(scene[face] - colour[face]).mean() < 20
            # No green anywhere: neither a key colour nor green fringes at the edges.
            r, g, b = scene[..., 0], scene[..., 1], scene[..., 2]
            green = (g > r + 40) & (g > b + 40)
            assert not green.any(), f"{int(green.sum())} green pixels, e.g. at {np.argwhere(green)[:3].tolist()}"
        # Opaque: the face looks the same over both scenes (up to the avatar's idle motion).
        first, second = shots[0][0], shots[1][0]
        assert np.median(np.abs(first[face] - second[face]).max(axis=1)) <= 6
        # The edge is anti-aliased: along the matte's boundary there are pixels between the
        # scene and the avatar, not only one or the other.
        scene, background = shots[0]
        edge = cv2.morphologyEx((alpha > 127).astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
        assert edge.sum() > 500

        # Captions, styled by the URL (size 30 px, colour #ffee00).
        api(server, "POST", f"/api/sessions/{stage['stage_id']}/say", {"text": "Good evening, and welcome."})
        frame.wait_for_function("() => !document.getElementById('caption').hidden", timeout=30_000)
        style = frame.evaluate(
            "() => { const s = getComputedStyle(document.getElementById('caption'));"
            " return [document.getElementById('caption').textContent, s.fontSize, s.color]; }"
        )
        assert style[0].startswith("Good evening") and style[1] == "30px" and style[2] == "rgb(255, 238, 0)"
        assert not errors, errors
        # The access log names the page and its options, never the view key (avatar.server.access_log).
        log = server.log.read_text()
        assert "/overlay.html?stage=…&key=…" in log and stage["view_key"] not in log
    finally:
        page.close()
        api(server, "DELETE", f"/api/stages/{stage['stage_id']}")


def test_overlay_keeps_trying_connects_when_the_stage_answers_and_notices_its_end(
    server: ServerProcess, browser: Any
) -> None:
    """An OBS source must heal itself: a wrong key or a stage that is not live yet is retried
    (with backoff) and said in a corner with ``?debug=1``; a page whose offers first fail (a
    network blip, then a stage not live yet) connects once they pass; a stage that ends mid-
    broadcast takes the avatar off the page, which goes back to trying."""
    stage = api(server, "POST", "/api/stages", {"avatar": "anna", "driver": "script"})
    sid = stage["stage_id"]
    offer_path = f"/api/stages/{sid}/offer"
    page = browser.new_page(viewport={"width": SIZE, "height": SIZE})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    offers: list[str] = []
    avatar_visibility = "() => getComputedStyle(document.getElementById('avatar')).visibility"
    page.on("request", lambda r: offers.append(r.url) if r.method == "POST" and offer_path in r.url else None)
    try:
        # A wrong key: refused (401) again and again, never live, the reason shown with debug=1.
        page.goto(f"{server.url}/overlay.html?stage={sid}&key=wrong&muted=1&debug=1")
        # (an attempt is counted when it starts, so the 4th has begun once 3 offers were answered)
        page.wait_for_function("() => Number(document.body.dataset.attempts) >= 4", timeout=60_000)
        assert len(offers) >= 3
        assert page.evaluate("() => document.body.dataset.state") != "live"
        diag = page.evaluate("() => [document.getElementById('diag').hidden, document.body.innerText]")
        assert diag[0] is False and "view key" in diag[1], diag
        assert page.evaluate(avatar_visibility) == "hidden"

        # The right key, but the first offer is lost (a network blip) and the second refused
        # (the stage not live yet): the page keeps trying and goes live on the third.
        refusals = ["blip", "not live"]

        def offer_route(route: Any) -> None:
            if not refusals:
                route.continue_()
            elif refusals.pop(0) == "blip":
                route.abort("connectionrefused")
            else:
                body = {"error": "a valid view key (?key=) or API token is required to watch this stage"}
                route.fulfill(status=401, content_type="application/json", body=json.dumps(body))

        page.route(f"**{offer_path}*", offer_route)
        offers.clear()
        page.goto(f"{server.url}{stage['overlay_url']}&muted=1")
        page.wait_for_function(
            "() => document.body.dataset.state === 'live' && Number(document.body.dataset.frames) > 5",
            timeout=60_000,
        )
        assert len(offers) == 3 and not refusals
        # Without debug=1 nothing is said on air.
        assert page.evaluate("() => document.getElementById('diag').hidden") is True
        assert page.evaluate(avatar_visibility) == "visible"

        # The stage ends mid-broadcast: the avatar leaves the page and the page tries again.
        api(server, "DELETE", f"/api/stages/{sid}")
        page.wait_for_function(
            "() => document.body.dataset.state !== 'live' && Number(document.body.dataset.attempts) >= 5",
            timeout=60_000,
        )
        assert page.evaluate(avatar_visibility) == "hidden"
        assert len(offers) >= 4
        assert not errors, errors
    finally:
        page.close()
