"""Barge-in state machine: onset while the avatar speaks, backchannels, and normal turns."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avatar.speech.bargein import (
    Backchannel,
    BargeIn,
    BargeInConfig,
    BargeInEvent,
    BargeInGuard,
    is_backchannel,
)
from avatar.speech.vad import WINDOW, WINDOW_SECONDS, VadFrame, VoiceActivityDetector

SPEECH = Path(__file__).parent / "data" / "speech"
W = WINDOW_SECONDS


def clip(name: str) -> np.ndarray:
    with wave.open(str(SPEECH / f"{name}.wav"), "rb") as wav:
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.int16)


def frames_from(probabilities: list[float], start: float = 10.0) -> list[VadFrame]:
    return [
        VadFrame(start + i * W, start + (i + 1) * W, p, np.zeros(WINDOW, np.int16))
        for i, p in enumerate(probabilities)
    ]


def feed(guard: BargeInGuard, frames: list[VadFrame]) -> list[BargeInEvent]:
    events: list[BargeInEvent] = []
    for frame in frames:
        events += guard.push(frame).events
    return events


@pytest.fixture(scope="module")
def detector() -> VoiceActivityDetector:
    return VoiceActivityDetector()


def customer_frames(detector: VoiceActivityDetector, name: str, at: float, total: float) -> list[VadFrame]:
    """The customer's mic: silence with ``name`` starting ``at`` seconds in (clock starts at 0)."""
    speech = clip(name)
    audio = np.zeros(max(int(total * 16_000), int(at * 16_000) + speech.size + 8000), np.int16)
    i = int(at * 16_000)
    audio[i : i + speech.size] = speech
    stream = detector.stream(0.0)
    frames: list[VadFrame] = []
    for k in range(0, audio.size, 320):
        frames += stream.push(audio[k : k + 320])
    return frames


def speech_onset(name: str) -> float:
    """Offset of the first loud sample in a clip (its lead-in silence is about 20 ms)."""
    loud = np.flatnonzero(np.abs(clip(name).astype(np.int32)) > 300)
    return float(loud[0]) / 16_000


def test_speech_onset_while_speaking_barges_in_min_speech_later() -> None:
    guard = BargeInGuard(BargeInConfig(min_speech=0.12, echo_guard=False))
    guard.avatar_started(9.0)
    events = feed(guard, frames_from([0.0] * 10 + [0.9] * 20))
    assert len(events) == 1 and isinstance(events[0], BargeIn)
    onset = 10.0 + 10 * W
    assert events[0].onset == pytest.approx(onset)
    assert events[0].decided_at == pytest.approx(onset + 4 * W)  # 128 ms >= 120 ms
    # one barge-in per avatar utterance
    assert feed(guard, frames_from([0.9] * 20, start=11.0)) == []


def test_real_speech_barge_in_decided_within_150_ms_of_onset(detector: VoiceActivityDetector) -> None:
    guard = BargeInGuard(BargeInConfig(echo_guard=False))
    guard.avatar_started(0.0)
    at = 1.5
    events = feed(guard, customer_frames(detector, "stop_please", at, 3.0))
    barge = [e for e in events if isinstance(e, BargeIn)]
    assert len(barge) == 1
    true_onset = at + speech_onset("stop_please")
    assert abs(barge[0].onset - true_onset) <= W  # within one VAD window
    assert barge[0].decided_at - true_onset <= 0.15 + W


def test_no_barge_in_while_the_avatar_is_silent(detector: VoiceActivityDetector) -> None:
    guard = BargeInGuard(BargeInConfig(echo_guard=False))
    frames = customer_frames(detector, "activate_card", 0.5, 2.5)
    results = [guard.push(f) for f in frames]
    assert all(not r.events for r in results)
    # the frames pass through untouched for the endpointer: that is a normal turn
    assert [r.frame.probability for r in results] == [f.probability for f in frames]
    # ...and after the avatar stopped, too
    guard.avatar_started(3.0)
    guard.avatar_stopped(3.5)
    assert feed(guard, frames_from([0.9] * 20, start=4.0)) == []


def test_stopping_mid_burst_drops_the_candidate() -> None:
    guard = BargeInGuard(BargeInConfig(min_speech=0.12, echo_guard=False))
    guard.avatar_started(0.0)
    assert feed(guard, frames_from([0.9] * 2)) == []
    guard.avatar_stopped(10.07)
    guard.avatar_started(10.5)
    # a fresh burst is needed: the two earlier windows do not count towards it
    events = feed(guard, frames_from([0.9] * 4, start=10.5))
    assert [type(e) for e in events] == [BargeIn]
    assert events[0].onset == pytest.approx(10.5)


def test_backchannel_is_ignored_when_configured(detector: VoiceActivityDetector) -> None:
    frames = customer_frames(detector, "uh_huh", 1.0, 2.5)
    ignoring = BargeInGuard(BargeInConfig(ignore_backchannel=True, echo_guard=False))
    ignoring.avatar_started(0.0)
    events = feed(ignoring, frames)
    assert [type(e) for e in events] == [Backchannel]
    backchannel = events[0]
    assert isinstance(backchannel, Backchannel) and backchannel.end - backchannel.onset < 0.4

    interrupting = BargeInGuard(BargeInConfig(ignore_backchannel=False, echo_guard=False))
    interrupting.avatar_started(0.0)
    assert [type(e) for e in feed(interrupting, frames)] == [BargeIn]


def test_longer_speech_interrupts_even_when_ignoring_backchannels(detector: VoiceActivityDetector) -> None:
    guard = BargeInGuard(BargeInConfig(ignore_backchannel=True, echo_guard=False))
    guard.avatar_started(0.0)
    events = feed(guard, customer_frames(detector, "stop_please", 1.0, 3.0))
    assert [type(e) for e in events] == [BargeIn]
    barge = events[0]
    assert isinstance(barge, BargeIn)
    # it waits until the burst outlasts backchannel_max ("Wait," + pause + "stop")
    assert 0.4 <= barge.decided_at - barge.onset < 0.4 + 0.3


def test_backchannel_followed_by_speech_is_one_burst_that_interrupts() -> None:
    guard = BargeInGuard(BargeInConfig(ignore_backchannel=True, follow_on_gap=0.3, echo_guard=False))
    guard.avatar_started(0.0)
    # 160 ms "mm", 190 ms pause (< follow_on_gap), more speech: follow-on speech interrupts
    events = feed(guard, frames_from([0.9] * 5 + [0.0] * 6 + [0.9] * 10))
    assert [type(e) for e in events] == [BargeIn]
    assert events[0].onset == pytest.approx(10.0)


def test_partial_words_decide_when_available() -> None:
    cfg = BargeInConfig(
        ignore_backchannel=True,
        min_speech=0.12,
        backchannel_max=0.4,
        backchannel_words_max=1.0,
        echo_guard=False,
    )
    words = BargeInGuard(cfg)
    words.avatar_started(0.0)
    assert feed(words, frames_from([0.9] * 5)) == []  # 160 ms: could still be "uh-huh"
    words.update_partial("Stop")
    events = feed(words, frames_from([0.9], start=10.0 + 5 * W))
    assert [type(e) for e in events] == [BargeIn]  # real words interrupt before 400 ms
    assert events[0].text == "Stop"

    acks = BargeInGuard(cfg)
    acks.avatar_started(0.0)
    acks.update_partial("")
    frames = frames_from([0.9] * 25 + [0.0] * 12)  # 800 ms of "okay, okay" then silence
    events = []
    for i, frame in enumerate(frames):
        if i == 3:
            acks.update_partial("Okay, okay.")
        events += acks.push(frame).events
    assert [type(e) for e in events] == [Backchannel]
    assert events[0].text == "Okay, okay."

    long_acks = BargeInGuard(cfg)
    long_acks.avatar_started(0.0)
    frames = frames_from([0.9] * 40)
    events = []
    for i, frame in enumerate(frames):
        if i == 3:
            long_acks.update_partial("yeah yeah yeah")
        events += long_acks.push(frame).events
    assert [type(e) for e in events] == [BargeIn]
    barge = events[0]
    assert isinstance(barge, BargeIn) and barge.decided_at - barge.onset == pytest.approx(1.0, abs=W)


def test_click_shorter_than_min_speech_is_nothing() -> None:
    guard = BargeInGuard(BargeInConfig(ignore_backchannel=True, echo_guard=False))
    guard.avatar_started(0.0)
    assert feed(guard, frames_from([0.9] * 2 + [0.0] * 20)) == []


@pytest.mark.parametrize(
    ("text", "backchannel"),
    [
        ("Uh-huh.", True),
        ("Mm-hmm", True),
        ("Okay, got it.", True),
        ("Oh.", True),
        ("嗯", True),
        ("嗯嗯，好的。", True),
        ("对对对", True),
        ("Okay, but how do I pay?", False),
        ("Stop", False),
        ("我要转账", False),
        ("", False),
    ],
)
def test_is_backchannel(text: str, backchannel: bool) -> None:
    assert is_backchannel(text) is backchannel


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="backchannel_max"):
        BargeInConfig(min_speech=0.5, backchannel_max=0.4)


@settings(max_examples=150, deadline=None)
@given(
    script=st.lists(
        st.tuples(
            st.sampled_from(["frame", "start", "stop", "partial"]), st.sampled_from([0.0, 0.4, 0.6, 0.95])
        ),
        min_size=1,
        max_size=300,
    ),
    ignore_backchannel=st.booleans(),
)
def test_guard_invariants(script: list[tuple[str, float]], ignore_backchannel: bool) -> None:
    guard = BargeInGuard(BargeInConfig(ignore_backchannel=ignore_backchannel, echo_guard=False))
    t = 0.0
    speaking, fired = False, False
    for action, value in script:
        if action == "start":
            guard.avatar_started(t)
            fired = fired and speaking
            speaking = True
        elif action == "stop":
            guard.avatar_stopped(t)
            speaking, fired = False, False
        elif action == "partial":
            guard.update_partial("uh-huh" if value < 0.5 else "wait I have a question")
        else:
            frame = VadFrame(t, t + W, value, np.zeros(WINDOW, np.int16))
            t += W
            result = guard.push(frame)
            assert result.frame is frame  # without the echo guard frames pass untouched
            for event in result.events:
                assert speaking, "no barge-in while the avatar is silent"
                if isinstance(event, BargeIn):
                    assert not fired, "one barge-in per avatar utterance"
                    fired = True
                    assert event.onset < event.decided_at <= frame.end + 1e-9
                    assert event.decided_at - event.onset >= guard.config.min_speech - 1e-9
                else:
                    assert ignore_backchannel and event.onset < event.end <= frame.end + 1e-9
