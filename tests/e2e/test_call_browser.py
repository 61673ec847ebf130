"""The customer's call in a real headless Chromium against the real server process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import ServerProcess

pytestmark = pytest.mark.e2e

AUDIO_ENERGY_JS = """async () => {
  const pc = window.avatarClient.pc; if (!pc) return null;
  const stats = await pc.getStats();
  let energy = 0, samples = 0, frames = 0, decoded = 0, codec = null;
  stats.forEach((r) => {
    if (r.type === 'inbound-rtp' && r.kind === 'audio') { energy = r.totalAudioEnergy || 0; samples = r.totalSamplesReceived || 0; }
    if (r.type === 'inbound-rtp' && r.kind === 'video') { frames = r.framesReceived || 0; decoded = r.framesDecoded || 0; codec = r.codecId; }
  });
  const codecName = codec && stats.get(codec) ? stats.get(codec).mimeType : null;
  return { energy, samples, frames, decoded, codec: codecName };
}"""


def test_customer_call_video_caption_and_sound(server: ServerProcess, browser: Any, artifacts: Path) -> None:
    page = browser.new_page(bypass_csp=True, viewport={"width": 420, "height": 860})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(server.url + "/")
        page.wait_for_function("document.querySelectorAll('#avatar-select option').length >= 2")
        page.click("#start")
        page.wait_for_function("window.avatarClient.connected === true", timeout=20_000)
        # Video frames are decoded by the browser.
        page.wait_for_function(
            "document.getElementById('video').getVideoPlaybackQuality().totalVideoFrames > 10", timeout=20_000
        )
        before = page.evaluate(AUDIO_ENERGY_JS)
        assert before["decoded"] > 10
        size = page.evaluate("[document.getElementById('video').videoWidth, document.getElementById('video').videoHeight]")
        assert size == [512, 512]

        page.fill("#text", "Hello, I would like to open an account.")
        page.click("#send")
        page.wait_for_function("window.avatarClient.captions.length > 0", timeout=20_000)
        caption = page.evaluate("window.avatarClient.captions[0]")
        assert caption["text"].startswith("Hello")
        assert len(caption["words"]) >= 2
        page.wait_for_function("window.avatarClient.states.includes('speaking')")
        # The audio track carries sound while the avatar speaks.
        page.wait_for_timeout(1500)
        after = page.evaluate(AUDIO_ENERGY_JS)
        assert after["samples"] > before["samples"]
        assert after["energy"] > before["energy"] + 1e-4, (before, after)
        page.wait_for_selector("#captions .w")
        page.screenshot(path=str(artifacts / "call-speaking.png"))
        assert not errors, errors
    finally:
        page.close()


def test_page_shows_a_clear_message_when_the_server_is_full(tmp_path: Path, browser: Any) -> None:
    from tests.e2e.conftest import start_server, stop_server

    srv = start_server(tmp_path, {"AVATAR_MAX_SESSIONS": "1"})
    first = browser.new_page(bypass_csp=True)
    second = browser.new_page(bypass_csp=True)
    try:
        first.goto(srv.url + "/")
        first.click("#start")
        first.wait_for_function("window.avatarClient.sessionId !== null", timeout=20_000)
        second.goto(srv.url + "/")
        second.click("#start")
        second.wait_for_selector("#message:not([hidden])", timeout=20_000)
        assert "busy" in second.inner_text("#message")
        assert second.is_visible("#start")  # the customer can try again
    finally:
        first.close()
        second.close()
        stop_server(srv)


def test_the_brain_answers_a_typed_question_on_topic(tmp_path: Path, browser: Any) -> None:
    """The AI driver on a bank's own knowledge base (here the English YAML alone, which learns in
    seconds): a typed question gets the knowledge base's answer, spoken and captioned."""
    from tests.e2e.conftest import SMALL_KB, kb_answer, start_server, stop_server, wait_for_brain

    srv = start_server(tmp_path, {"AVATAR_DRIVER": "brain", "AVATAR_KB_PATH": str(SMALL_KB)})
    page = browser.new_page(bypass_csp=True)
    try:
        # The server listens at once and learns the knowledge base in the background.
        wait_for_brain(srv, within=120)
        page.goto(srv.url + "/")
        page.click("#start")
        page.wait_for_function("window.avatarClient.connected === true", timeout=20_000)
        page.fill("#text", "I want to activate my card")
        page.click("#send")
        page.wait_for_function("window.avatarClient.captions.length > 0", timeout=20_000)
        first = page.evaluate("window.avatarClient.captions[0].text")
        expected = kb_answer("activate_my_card")
        # The first spoken sentence is the start of the knowledge base's answer.
        assert expected.startswith(first.rstrip(".!?")[:30]), (first, expected)
        page.wait_for_function("window.avatarClient.states.includes('speaking')")
    finally:
        page.close()
        stop_server(srv)
