"""web/mirror.html in a real headless Chromium against the real server: a webcam (a photo
avatar of another person, fed to Chromium as its fake camera) drives the astronaut, and the
astronaut's mouth, measured again with the face mesh in the received video, opens and closes."""

from __future__ import annotations

import base64
import math
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from avatar.face.cues import MOUTH_GAP_AT_FULL_OPEN, measure_cues
from avatar.face.landmarks import FaceTracker
from avatar.face_state import FaceState, MouthShape
from avatar.render.photo import load_photo_avatar
from avatar.render.photo_build import build_photo_avatar
from tests.e2e.conftest import CHROMIUM, CHROMIUM_FLAGS, ServerProcess, start_server, stop_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

FACES = Path(__file__).parent / "data" / "faces"
CAMERA_FPS = 25
CAMERA_PERIOD_S = 2.0  # the fake webcam opens and closes its mouth once every 2 s


def write_camera_y4m(path: Path, tracker: FaceTracker, tmp: Path) -> None:
    """A looping webcam clip: another person (built from a test portrait) talking."""
    built = build_photo_avatar(FACES / "obama.jpg", tmp / "avatars", "webcam", tracker=tracker)
    person = load_photo_avatar(built.path, 480, 360)
    frames = int(CAMERA_PERIOD_S * CAMERA_FPS)
    with path.open("wb") as out:
        out.write(f"YUV4MPEG2 W480 H360 F{CAMERA_FPS}:1 Ip A1:1 C420jpeg\n".encode())
        for i in range(frames):
            opening = abs(math.sin(math.pi * i / frames))
            rgb = person.render(FaceState(mouth=MouthShape(open=opening)))
            out.write(b"FRAME\n")
            out.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420).tobytes())


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    srv = start_server(tmp_path)
    yield srv
    stop_server(srv)


GRAB_FRAME_JS = """() => {
  const v = document.getElementById('avatar');
  if (!v.videoWidth) return null;
  const c = document.createElement('canvas');
  c.width = v.videoWidth; c.height = v.videoHeight;
  c.getContext('2d').drawImage(v, 0, 0);
  return c.toDataURL('image/png').split(',')[1];
}"""


def test_webcam_on_the_mirror_page_drives_the_avatar(server: ServerProcess, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    tracker = FaceTracker()
    camera = tmp_path / "camera.y4m"
    write_camera_y4m(camera, tracker, tmp_path)
    flags = [*CHROMIUM_FLAGS, f"--use-file-for-fake-video-capture={camera}"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=flags)
        try:
            page = browser.new_page(bypass_csp=True, viewport={"width": 1100, "height": 720})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(server.url + "/mirror.html?avatar=astronaut")
            page.wait_for_function("document.querySelectorAll('#avatar-select option').length >= 1")
            assert page.evaluate("document.getElementById('avatar-select').value") == "astronaut"
            page.click("#start")
            page.wait_for_function("window.mirrorClient.connected === true", timeout=20_000)
            page.wait_for_function("window.mirrorClient.receiving === true", timeout=20_000)
            page.wait_for_timeout(1500)  # let the puppet calibrate on the first second of frames
            openings: list[float] = []
            for _ in range(16):
                png = page.evaluate(GRAB_FRAME_JS)
                assert png is not None
                frame = cv2.cvtColor(cv2.imdecode(np.frombuffer(base64.b64decode(png), np.uint8), 1), cv2.COLOR_BGR2RGB)
                faces = tracker.landmarks(frame)
                assert faces, "no face in the avatar video"
                openings.append(measure_cues(faces[0]).mouth_gap / MOUTH_GAP_AT_FULL_OPEN)
                page.wait_for_timeout(CAMERA_PERIOD_S * 1000 / 8)
            page.screenshot(path=str(tmp_path / "mirror.png"))
            assert not errors, errors
            assert page.evaluate("window.mirrorClient.errors") == []
        finally:
            browser.close()
    # The avatar's mouth follows the webcam's: it closes and opens wide within each period.
    assert min(openings) < 0.2, openings
    assert max(openings) > 0.6, openings
