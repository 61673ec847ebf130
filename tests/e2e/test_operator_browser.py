"""Two real Chromium pages, a customer and an operator, against the real server process: the
operator signs in, sees the call, opens it and sees the avatar's video (frames decoded, not
black) and hears the customer's microphone (Chromium's fake device) over WebRTC, takes it over,
types a line that the customer hears (a caption with sound on the same connection, avatar and
voice), speaks a line in voice mode (the operator's fake microphone reaches the customer on the
avatar's audio track and is recorded under their name), hands back, and the AI answers the next
customer line; the stored transcript says who said what."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import ServerProcess
from tests.e2e.test_call_browser import AUDIO_ENERGY_JS

pytestmark = pytest.mark.e2e

PASSWORD = "desk-password-1"

#: The operator page's live view: decoded frames and mean brightness of the avatar's video, and the
#: audio energy received on the customer's microphone track.
WATCH_JS = """async () => {
  const w = window.operatorPanel.watch; if (!w) return null;
  const video = document.getElementById('watch-video');
  let luma = null;
  if (video.videoWidth) {
    const c = document.createElement('canvas'); c.width = 64; c.height = 64;
    const g = c.getContext('2d'); g.drawImage(video, 0, 0, 64, 64);
    const px = g.getImageData(0, 0, 64, 64).data; let sum = 0;
    for (let i = 0; i < px.length; i += 4) sum += (px[i] + px[i + 1] + px[i + 2]) / 3;
    luma = sum / (px.length / 4);
  }
  const mic = document.getElementById('watch-customer').srcObject;
  const micId = mic && mic.getAudioTracks()[0] ? mic.getAudioTracks()[0].id : null;
  let customerEnergy = 0, decoded = 0;
  (await w.pc.getStats()).forEach((r) => {
    if (r.type === 'inbound-rtp' && r.kind === 'video') decoded = r.framesDecoded || 0;
    if (r.type === 'inbound-rtp' && r.kind === 'audio' && r.trackIdentifier === micId) customerEnergy = r.totalAudioEnergy || 0;
  });
  return { state: w.state, decoded, luma, customerEnergy, playing: !video.paused };
}"""


def add_operator(server: ServerProcess, name: str) -> None:
    env = {**os.environ, "AVATAR_DATA_DIR": str(server.data_dir)}
    done = subprocess.run(
        [sys.executable, "-m", "avatar", "operator", "add", name], input=PASSWORD + "\n", text=True,
        capture_output=True, env=env, timeout=60,
    )
    assert done.returncode == 0, done.stderr


def test_operator_takes_over_a_live_call(server: ServerProcess, browser: Any, artifacts: Path) -> None:
    add_operator(server, "alice")  # the store is shared with the running server (WAL)
    # bypass_csp: the server's Content-Security-Policy forbids eval, which Playwright's polling
    # predicates (wait_for_function) need; this turns the policy off for these two pages.
    customer = browser.new_context(bypass_csp=True, viewport={"width": 420, "height": 860}).new_page()
    operator = browser.new_context(bypass_csp=True, viewport={"width": 1100, "height": 760}).new_page()
    errors: list[str] = []
    for page in (customer, operator):
        page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        customer.goto(server.url + "/")
        customer.click("#start")
        customer.wait_for_function("window.avatarClient.connected === true", timeout=20_000)
        sid = customer.evaluate("window.avatarClient.sessionId")
        customer.fill("#text", "Hello there")
        customer.click("#send")
        customer.wait_for_function("window.avatarClient.captions.some(c => c.text.startsWith('Hello'))", timeout=20_000)
        first_caption = customer.evaluate("window.avatarClient.captions[0]")

        operator.goto(server.url + "/operator")
        operator.fill("#name", "alice")
        operator.fill("#password", PASSWORD)
        operator.click("#signin-button")
        operator.wait_for_function(f"window.operatorPanel.connected && !!window.operatorPanel.sessions['{sid}']")
        operator.click(f"li.card[data-session-id='{sid}']")
        operator.wait_for_selector("#transcript li.customer")
        # The live view: the avatar's picture plays, and the customer's microphone is heard.
        operator.wait_for_function("window.operatorPanel.watch && window.operatorPanel.watch.state === 'connected'",
                                   timeout=20_000)
        operator.wait_for_timeout(1500)
        first_view = operator.evaluate(WATCH_JS)
        operator.wait_for_timeout(1500)
        view = operator.evaluate(WATCH_JS)
        assert view["playing"] and view["decoded"] > first_view["decoded"] > 10, (first_view, view)
        assert view["luma"] is not None and view["luma"] > 20, view  # not a black picture
        assert view["customerEnergy"] > 0, view  # the customer's fake microphone, relayed
        operator.click("#takeover")
        operator.wait_for_function(f"window.operatorPanel.sessions['{sid}'].control === 'operator'")
        assert operator.evaluate(f"window.operatorPanel.sessions['{sid}'].holder") == "alice"

        before = customer.evaluate(AUDIO_ENERGY_JS)
        operator.fill("#say-text", "Hi, this is Alice from the bank. How can I help?")
        operator.click("#say-send")
        customer.wait_for_function(
            "window.avatarClient.captions.some(c => c.text.startsWith('Hi, this is Alice'))", timeout=20_000
        )
        customer.wait_for_timeout(1500)
        after = customer.evaluate(AUDIO_ENERGY_JS)
        assert after["energy"] > before["energy"] + 1e-4, (before, after)  # heard, not only captioned
        spoken = customer.evaluate("window.avatarClient.captions.find(c => c.text.startsWith('Hi, this is Alice'))")
        # Same call, same voice and language: nothing on the customer's side changed.
        assert customer.evaluate("window.avatarClient.sessionId") == sid
        assert spoken["lang"] == first_caption["lang"]
        assert not customer.evaluate("window.avatarClient.errors")
        operator.wait_for_selector("#transcript li.operator")
        operator.screenshot(path=str(artifacts / "operator-holding.png"))

        # Voice mode: the operator's (fake) microphone is the avatar's voice.
        before_voice = customer.evaluate(AUDIO_ENERGY_JS)
        operator.click("#voice-mode")
        operator.wait_for_function("window.operatorPanel.drive.voice && window.operatorPanel.drive.state === 'connected'",
                                   timeout=20_000)
        operator.wait_for_timeout(3000)
        after_voice = customer.evaluate(AUDIO_ENERGY_JS)
        assert after_voice["energy"] > before_voice["energy"] + 1e-4, (before_voice, after_voice)
        operator.click("#voice-mode")  # off again: the stretch of speech in progress is recorded
        operator.wait_for_function("!window.operatorPanel.drive.voice")
        operator.wait_for_function(
            "[...document.querySelectorAll('#transcript li.operator')].length >= 2", timeout=20_000
        )

        operator.click("#handback")
        operator.wait_for_function(f"window.operatorPanel.sessions['{sid}'].control === 'ai'")
        customer.fill("#text", "Thank you very much")
        customer.click("#send")
        customer.wait_for_function(
            "window.avatarClient.captions.some(c => c.text.startsWith('Thank you'))", timeout=20_000
        )
        operator.wait_for_function(
            "[...document.querySelectorAll('#transcript li.ai')].some(li => li.textContent.includes('Thank you'))",
            timeout=20_000,
        )

        req = urllib.request.Request(
            f"{server.url}/api/sessions/{sid}/transcript", headers={"Authorization": f"Bearer {server.token}"}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            stored = json.load(resp)
        who = [(u["speaker"], u["text"]) for u in stored["utterances"]]
        assert who[0] == ("customer", "Hello there")
        alice_line = ("alice", "Hi, this is Alice from the bank. How can I help?")
        assert alice_line in who
        assert any(speaker == "alice" and (text, speaker) != alice_line[::-1] for speaker, text in who)  # voice mode
        assert who.index(alice_line) < who.index(("customer", "Thank you very much")) < who.index(("ai", "Thank you very much"))
        assert [e["kind"] for e in stored["events"]] == ["takeover", "handback"]
        assert not errors, errors
    finally:
        customer.context.close()
        operator.context.close()
