"""The server-side echo guard: the avatar's voice leaking into the customer's microphone.

Each scenario plays the avatar's synthesised reply as the far end (48 kHz, 20 ms chunks, as
the stage sends it) and builds the customer's microphone signal from a delayed, attenuated
copy of it plus noise (and, in some, the customer's own speech); everything runs through
the real VAD, the barge-in guard and the endpointer on one media clock.
"""

from __future__ import annotations

import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from scipy.signal import fftconvolve

from avatar.speech.bargein import BargeIn, BargeInConfig, BargeInGuard
from avatar.speech.echo import EchoConfig, EchoGuard
from avatar.speech.endpoint import Endpointer, SpeechStarted
from avatar.speech.resample import resample
from avatar.speech.vad import VoiceActivityDetector

SPEECH = Path(__file__).parent / "data" / "speech"
RATE = 16_000
AVATAR_AT = 1.0  # the avatar starts speaking 1 s into the call


def clip(name: str) -> np.ndarray:
    with wave.open(str(SPEECH / f"{name}.wav"), "rb") as wav:
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.int16)


@pytest.fixture(scope="module")
def detector() -> VoiceActivityDetector:
    return VoiceActivityDetector()


@dataclass
class Outcome:
    barge_ins: list[BargeIn]
    turn_starts: list[SpeechStarted]  # what the endpointer heard as the customer speaking
    guard: BargeInGuard


def call(
    detector: VoiceActivityDetector,
    *,
    echo_db: float = -10.0,
    delay: float = 0.12,
    noise_db: float = -55.0,
    reverb: float = 0.0,
    wobble_db: float = 0.0,
    customer: str | None = None,
    customer_at: float = 3.0,
    customer_db: float = 0.0,
    guard_echo: bool = True,
    seed: int = 0,
) -> Outcome:
    rng = np.random.default_rng(seed)
    reply = clip("avatar_reply")
    total = AVATAR_AT + reply.size / RATE + 2.0
    n = int(total * RATE)
    echo = reply.astype(np.float64)
    if reverb:
        length = int(reverb * RATE)
        tail = rng.standard_normal(length) * np.exp(-6.9 * np.arange(length) / length)
        tail *= 0.5 / np.sqrt(np.sum(tail**2))
        tail[0] = 1.0
        echo = fftconvolve(echo, tail)[: reply.size]
    if wobble_db:  # an echo canceller still adapting: the leak's gain drifts
        echo *= 10 ** (wobble_db * np.sin(2 * np.pi * np.arange(echo.size) / RATE / 1.7) / 20)
    mic = rng.standard_normal(n) * 32768 * 10 ** (noise_db / 20)
    start = int((AVATAR_AT + delay) * RATE)
    mic[start : start + echo.size] += echo[: n - start] * 10 ** (echo_db / 20)
    if customer is not None:
        voice = clip(customer).astype(np.float64) * 10 ** (customer_db / 20)
        at = int(customer_at * RATE)
        mic[at : at + voice.size] += voice
    mic16 = np.clip(np.rint(mic), -32768, 32767).astype(np.int16)

    far = resample(reply, RATE, 48_000)
    guard = BargeInGuard(BargeInConfig(echo_guard=guard_echo))
    endpointer = Endpointer()
    stream = detector.stream(0.0)
    sent = 0  # far-end samples sent so far
    chunk = 960  # 20 ms at 48 kHz
    barge_ins: list[BargeIn] = []
    starts: list[SpeechStarted] = []
    reply_end = AVATAR_AT + reply.size / RATE
    for k in range(0, n, 320):
        now = k / RATE
        if AVATAR_AT <= now < reply_end and not guard.avatar_speaking:
            guard.avatar_started(AVATAR_AT)
        # the stage hands over each 20 ms of the avatar's voice as it sends it
        while sent < far.size and AVATAR_AT + sent / 48_000 <= now + 0.02:
            guard.push_far_end(far[sent : sent + chunk], 48_000, AVATAR_AT + sent / 48_000)
            sent += chunk
        if now >= reply_end and guard.avatar_speaking:
            guard.avatar_stopped(now)
        for frame in stream.push(mic16[k : k + 320]):
            result = guard.push(frame)
            barge_ins += [e for e in result.events if isinstance(e, BargeIn)]
            starts += [e for e in endpointer.push(result.frame) if isinstance(e, SpeechStarted)]
    return Outcome(barge_ins, starts, guard)


def test_leaking_echo_does_not_barge_in_or_start_a_turn(detector: VoiceActivityDetector) -> None:
    unguarded = call(detector, guard_echo=False)
    assert unguarded.barge_ins, "the echo is loud enough to trigger barge-in without the guard"
    guarded = call(detector)
    assert guarded.barge_ins == []
    assert guarded.turn_starts == []  # nor does the avatar end up answering itself


def test_echo_path_is_estimated(detector: VoiceActivityDetector) -> None:
    path = call(detector).guard.echo.echo_path  # type: ignore[union-attr]
    assert path is not None
    delay, gain_db = path
    assert delay == pytest.approx(0.12, abs=0.016)
    assert gain_db == pytest.approx(-10.0, abs=2.0)


@pytest.mark.parametrize(
    "leak",
    [
        {"delay": 0.3, "echo_db": -6.0},
        {"delay": 0.05, "echo_db": 0.0, "noise_db": -45.0},
        {"reverb": 0.5},
        {"wobble_db": 6.0},
        {"reverb": 0.3, "wobble_db": 6.0, "echo_db": -15.0},
    ],
)
def test_harder_echo_paths_do_not_barge_in(detector: VoiceActivityDetector, leak: dict[str, float]) -> None:
    outcome = call(detector, **leak)  # type: ignore[arg-type]
    assert outcome.barge_ins == []


def test_customer_speaking_over_the_echo_barges_in(detector: VoiceActivityDetector) -> None:
    at = 3.0
    outcome = call(detector, customer="stop_please", customer_at=at)
    assert len(outcome.barge_ins) == 1
    barge = outcome.barge_ins[0]
    assert at <= barge.onset <= at + 0.15
    assert barge.decided_at - at <= 0.3
    assert outcome.turn_starts and outcome.turn_starts[0].t == pytest.approx(barge.onset, abs=0.1)


def test_customer_over_a_reverberant_drifting_echo_barges_in(detector: VoiceActivityDetector) -> None:
    outcome = call(detector, customer="stop_please", customer_at=4.0, reverb=0.5, wobble_db=6.0)
    assert len(outcome.barge_ins) == 1
    assert 4.0 <= outcome.barge_ins[0].onset <= 4.2


def test_customer_with_no_echo_at_all_barges_in(detector: VoiceActivityDetector) -> None:
    # Headphones: nothing leaks, so there is no echo path to find and the customer is heard.
    outcome = call(detector, echo_db=-200.0, customer="stop_please", customer_at=3.0)
    assert len(outcome.barge_ins) == 1
    assert 3.0 <= outcome.barge_ins[0].onset <= 3.1


def test_customer_after_the_avatar_finished_is_an_ordinary_turn(detector: VoiceActivityDetector) -> None:
    end_of_reply = AVATAR_AT + clip("avatar_reply").size / RATE
    outcome = call(detector, customer="activate_card", customer_at=end_of_reply + 0.2)
    assert outcome.barge_ins == []
    assert len(outcome.turn_starts) == 1
    assert outcome.turn_starts[0].t == pytest.approx(end_of_reply + 0.2, abs=0.1)


def test_near_end_with_no_far_end_sound_is_the_customer() -> None:
    guard = EchoGuard(EchoConfig())
    guard.push_far_end(np.zeros(48_000, np.int16), 48_000, 0.0)  # the avatar is silent
    loud = (np.sin(np.arange(512) * 0.3) * 8000).astype(np.int16)
    verdict = guard.assess(loud, 0.5)
    assert verdict.customer and verdict.echo_db is None
    assert verdict.near_db == pytest.approx(-15.2, abs=0.5)
