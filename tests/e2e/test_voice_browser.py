"""The customer talks to the avatar in a real headless Chromium whose microphone is a WAV file
(``--use-file-for-fake-audio-capture``), against the real server process: a spoken question
is answered with a caption and sound; speech over the avatar's answer cuts it off."""

from __future__ import annotations

import json
import re
import urllib.request
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.e2e.conftest import (
    CHROMIUM,
    CHROMIUM_FLAGS,
    SMALL_KB,
    ServerProcess,
    kb_answer,
    start_server,
    stop_server,
    wait_for_brain,
)

pytestmark = pytest.mark.e2e

SPEECH = Path(__file__).resolve().parents[1] / "data" / "speech"
RATE = 16_000
#: Who answers on the server in these tests. The question's caption check follows it
#: (``answers_the_question``); the barge-in test always runs the echo driver.
DRIVER = "brain"
QUESTION = "How do I activate my new card?"
# Samples the page every 100 ms: inbound audio energy (WebRTC stats) and the session state.
SAMPLER_JS = """() => {
  const c = window.avatarClient; c.samples = [];
  c.sampler = setInterval(async () => {
    if (!c.pc) return;
    const stats = await c.pc.getStats(); let energy = 0;
    stats.forEach((r) => { if (r.type === 'inbound-rtp' && r.kind === 'audio') energy = r.totalAudioEnergy || 0; });
    c.samples.push({ t: performance.now() / 1000, energy, state: c.state, captions: c.captions.length });
  }, 100);
}"""


def answers_the_question(question: str, captions: list[str]) -> bool:
    """Whether the avatar's captions answer ``question``: the echo driver says it back; the
    brain answers from the knowledge base's ``activate_my_card`` entry."""
    said = " ".join(captions).lower()
    if DRIVER == "echo":
        return set(words(question)) <= set(words(said))
    # The knowledge base's answer for activate_my_card, as spoken (its first words).
    return " ".join(words(kb_answer("activate_my_card"))[:6]) in " ".join(words(said))


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def clip(name: str) -> np.ndarray:
    with wave.open(str(SPEECH / f"{name}.wav"), "rb") as wav:
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.int16)


def microphone_wav(path: Path, parts: list[np.ndarray | float]) -> Path:
    """Write the fake microphone: clips and silences (seconds) in order, 16 kHz mono."""
    audio = np.concatenate([np.zeros(int(p * RATE), np.int16) if isinstance(p, float) else p for p in parts])
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(audio.astype("<i2").tobytes())
    return path


def launch(playwright: Any, wav: Path) -> Any:
    # "%noloop": Chromium plays the file once instead of looping it.
    flags = [*CHROMIUM_FLAGS, f"--use-file-for-fake-audio-capture={wav}%noloop"]
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=flags)


def transcript(server: ServerProcess, session_id: str) -> list[dict[str, Any]]:
    request = urllib.request.Request(
        f"{server.url}/api/sessions/{session_id}/transcript",
        headers={"Authorization": f"Bearer {server.token}"},
    )
    with urllib.request.urlopen(request, timeout=5) as resp:
        body: dict[str, Any] = json.load(resp)
    entries: list[dict[str, Any]] = body["transcript"]
    return entries


@pytest.fixture(scope="module")
def playwright() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        yield p


def call(browser: Any, server: ServerProcess) -> tuple[Any, list[str]]:
    page = browser.new_page(bypass_csp=True)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server.url + "/")
    page.click("#start")
    page.wait_for_function("window.avatarClient.connected === true", timeout=20_000)
    page.evaluate(SAMPLER_JS)
    return page, errors


def test_a_spoken_question_is_answered_with_voice_and_caption(tmp_path: Path, playwright: Any) -> None:
    # Three seconds of silence first: the file starts playing when the page opens the microphone,
    # before the call is connected.
    wav = microphone_wav(tmp_path / "question.wav", [3.0, clip("activate_card"), 20.0])
    server = start_server(tmp_path, {"AVATAR_DRIVER": DRIVER, "AVATAR_KB_PATH": str(SMALL_KB)})
    if DRIVER == "brain":
        wait_for_brain(server)
    browser = launch(playwright, wav)
    try:
        page, errors = call(browser, server)
        page.wait_for_function(
            "window.avatarClient.transcripts.some((t) => t.speaker === 'customer' && t.final)", timeout=30_000
        )
        heard = page.evaluate(
            "window.avatarClient.transcripts.find((t) => t.speaker === 'customer' && t.final).text"
        )
        assert words(heard) == words(QUESTION)
        assert "listening" in page.evaluate("window.avatarClient.states")
        page.wait_for_function("window.avatarClient.captions.length > 0", timeout=30_000)
        page.wait_for_function("window.avatarClient.states.includes('speaking')", timeout=30_000)
        page.wait_for_timeout(1500)
        captions = [c["text"] for c in page.evaluate("window.avatarClient.captions")]
        assert answers_the_question(QUESTION, captions), captions
        samples = page.evaluate("window.avatarClient.samples")
        speaking = [s["energy"] for s in samples if s["state"] == "speaking"]
        assert speaking and speaking[-1] > speaking[0] + 1e-4, "no sound on the audio track while speaking"
        session_id = page.evaluate("window.avatarClient.sessionId")
        lines = transcript(server, session_id)
        assert lines[0]["speaker"] == "customer" and words(lines[0]["text"]) == words(QUESTION)
        assert not errors, errors
    finally:
        browser.close()
        stop_server(server)


def test_speaking_over_the_avatar_cuts_it_off(tmp_path: Path, playwright: Any) -> None:
    question = clip("long_question")  # the echo driver says it back: about 7 s of reply
    # Speak again 5 s after the question: inside the reply whether it starts 0.5 s or, on a
    # very busy machine, 4 s after the question.
    wav = microphone_wav(tmp_path / "barge.wav", [3.0, question, 5.0, clip("stop_please"), 12.0])
    server = start_server(tmp_path, {"AVATAR_DRIVER": "echo"})
    browser = launch(playwright, wav)
    try:
        page, errors = call(browser, server)
        page.wait_for_function(
            "window.avatarClient.transcripts.filter((t) => t.speaker === 'customer' && t.final).length >= 2",
            timeout=40_000,
        )
        page.wait_for_timeout(500)
        samples = page.evaluate("window.avatarClient.samples")
        states = [s["state"] for s in samples]
        told = page.evaluate("window.avatarClient.transcripts")
        assert "speaking" in states, (states, told)
        first_speaking = states.index("speaking")
        cut = next((i for i in range(first_speaking, len(states)) if states[i] != "speaking"), None)
        listened = [line for line in server.log.read_text().splitlines() if "avatar.listener" in line]
        assert cut is not None, ("the avatar never stopped", states, listened)
        assert states[cut] in ("idle", "listening")
        # While the customer has the floor the avatar is quiet: the received audio energy stops
        # growing (allowing half a second for the cut to reach the page) until it answers again.
        resumed = next((i for i in range(cut, len(states)) if states[i] == "speaking"), len(states))
        quiet = [s for s in samples[cut:resumed] if s["t"] >= samples[cut]["t"] + 0.5]
        talking = samples[first_speaking:cut]
        assert len(quiet) >= 5 and len(talking) >= 5
        quiet_rate = (quiet[-1]["energy"] - quiet[0]["energy"]) / (quiet[-1]["t"] - quiet[0]["t"])
        talking_rate = (talking[-1]["energy"] - talking[0]["energy"]) / (talking[-1]["t"] - talking[0]["t"])
        assert talking_rate > 0 and quiet_rate < 0.02 * talking_rate, (quiet_rate, talking_rate)
        # The stored transcript: the reply as far as it was heard, marked interrupted.
        lines = transcript(server, page.evaluate("window.avatarClient.sessionId"))
        said = [(line["speaker"], line["interrupted"]) for line in lines[:3]]
        assert said == [("customer", False), ("ai", True), ("customer", False)], lines
        asked, cut_reply = words(lines[0]["text"]), words(lines[1]["text"])
        assert 0 < len(cut_reply) < len(asked) and asked[: len(cut_reply)] == cut_reply
        assert {"wait", "stop"} <= set(words(lines[2]["text"]))
        interrupted = [t for t in page.evaluate("window.avatarClient.transcripts") if t.get("interrupted")]
        assert interrupted and interrupted[0]["speaker"] == "avatar"  # the page never learns who drove
        assert not errors, errors
    finally:
        browser.close()
        stop_server(server)
