"""Endpointing: speech start, pauses, end of turn, pre-roll, max length, on the media clock."""

from __future__ import annotations

import math
import wave
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avatar.speech.endpoint import (
    EndpointConfig,
    Endpointer,
    EndpointEvent,
    EndpointState,
    SpeechEnded,
    SpeechStarted,
    TurnEnded,
    looks_unfinished,
)
from avatar.speech.vad import WINDOW, WINDOW_SECONDS, VadFrame, VoiceActivityDetector

SPEECH = Path(__file__).parent / "data" / "speech"
W = WINDOW_SECONDS  # 0.032 s


def clip(name: str) -> np.ndarray:
    with wave.open(str(SPEECH / f"{name}.wav"), "rb") as wav:
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.int16)


def frames_from(probabilities: list[float], start: float = 100.0) -> list[VadFrame]:
    """Synthetic frames; window i's samples all equal i, so audio slices can be traced."""
    return [
        VadFrame(start + i * W, start + (i + 1) * W, p, np.full(WINDOW, i, dtype=np.int16))
        for i, p in enumerate(probabilities)
    ]


def feed(endpointer: Endpointer, frames: list[VadFrame]) -> list[EndpointEvent]:
    events: list[EndpointEvent] = []
    for frame in frames:
        events += endpointer.push(frame)
    return events


def windows(seconds: float) -> int:
    return round(seconds / W)


CFG = EndpointConfig(min_speech=0.2, hangover=0.3, end_of_turn=0.6, end_of_turn_unfinished=1.5, pre_roll=0.3)


def test_speech_start_needs_min_speech_and_reports_true_onset() -> None:
    ep = Endpointer(CFG)
    probs = [0.0] * 20 + [0.9] * 3 + [0.1] * 10 + [0.9] * 10 + [0.0] * 5
    events = feed(ep, frames_from(probs))
    starts = [e for e in events if isinstance(e, SpeechStarted)]
    assert len(starts) == 1  # the 96 ms blip did not count
    onset_index = 33
    assert starts[0].t == pytest.approx(100.0 + onset_index * W)
    # decided when 200 ms of speech had been seen: at the end of the 7th window (224 ms)
    assert starts[0].decided_at == pytest.approx(100.0 + (onset_index + 7) * W)
    assert not starts[0].continues_turn


def test_short_pause_keeps_the_turn_long_pause_ends_it() -> None:
    ep = Endpointer(CFG)
    short_pause = windows(0.45)  # beyond the hangover, short of end_of_turn
    probs = [0.0] * 10 + [0.9] * 30 + [0.0] * short_pause + [0.9] * 30 + [0.0] * windows(1.0)
    events = feed(ep, frames_from(probs))
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["SpeechStarted", "SpeechEnded", "SpeechStarted", "SpeechEnded", "TurnEnded"]
    resumed = events[2]
    assert isinstance(resumed, SpeechStarted) and resumed.continues_turn
    turn = events[-1]
    assert isinstance(turn, TurnEnded) and turn.reason == "silence"
    speech_end = 100.0 + (10 + 30 + short_pause + 30) * W
    assert turn.start == pytest.approx(100.0 + 10 * W)
    assert turn.t == pytest.approx(speech_end)
    # decided at the end of the first window that completes 600 ms of silence
    assert turn.decided_at == pytest.approx(speech_end + math.ceil(CFG.end_of_turn / W) * W)
    # one turn: the audio spans both stretches of speech and the pause between them
    assert turn.audio.size == pytest.approx((turn.t + CFG.post_roll - turn.audio_start) * 16_000, abs=1)

    ep2 = Endpointer(CFG)
    long_pause = windows(0.8)
    probs2 = [0.0] * 10 + [0.9] * 30 + [0.0] * long_pause + [0.9] * 30 + [0.0] * windows(1.0)
    turns = [e for e in feed(ep2, frames_from(probs2)) if isinstance(e, TurnEnded)]
    assert len(turns) == 2


def test_speech_ended_comes_after_the_hangover_with_the_audio_so_far() -> None:
    ep = Endpointer(CFG)
    probs = [0.0] * 10 + [0.9] * 20 + [0.0] * 15
    events = feed(ep, frames_from(probs))
    ended = next(e for e in events if isinstance(e, SpeechEnded))
    end = 100.0 + 30 * W
    assert ended.t == pytest.approx(end)
    assert ended.decided_at - ended.t >= CFG.hangover
    assert ended.decided_at - ended.t < CFG.hangover + W
    assert ended.audio_start < 100.0 + 10 * W  # pre-roll included
    assert ep.state is EndpointState.PAUSED


def test_turn_audio_includes_pre_roll_and_post_roll() -> None:
    ep = Endpointer(CFG)
    probs = [0.0] * 30 + [0.9] * 20 + [0.0] * 30
    turn = next(e for e in feed(ep, frames_from(probs)) if isinstance(e, TurnEnded))
    onset = 100.0 + 30 * W
    assert turn.start == pytest.approx(onset)
    # pre-roll: the whole windows that lie within 300 ms before the onset
    assert onset - turn.audio_start >= CFG.pre_roll - W
    assert onset - turn.audio_start <= CFG.pre_roll + W
    first_window = int(turn.audio[0])  # synthetic windows carry their index as sample values
    assert first_window == round((turn.audio_start - 100.0) / W)
    assert first_window < 30  # audio from before the onset is in the turn
    # post-roll: 100 ms of the silence after the last speech window
    assert turn.audio_start + turn.audio.size / 16_000 == pytest.approx(turn.t + CFG.post_roll, abs=1e-4)
    assert int(turn.audio[-1]) == 50 + 3  # 100 ms = 3.1 windows after window 49


def test_max_utterance_forces_the_turn_end_and_speech_goes_on() -> None:
    cfg = EndpointConfig(min_speech=0.2, max_utterance=2.0, pre_roll=0.3)
    ep = Endpointer(cfg)
    probs = [0.0] * 5 + [0.9] * windows(3.5) + [0.0] * windows(1.0)
    events = feed(ep, frames_from(probs))
    turns = [e for e in events if isinstance(e, TurnEnded)]
    assert turns[0].reason == "max_length"
    assert turns[0].decided_at - turns[0].start == pytest.approx(2.0, abs=W)
    assert turns[0].audio.size <= (2.0 + cfg.pre_roll + W) * 16_000
    # the customer kept talking: a new turn starts right away and ends on silence
    starts = [e for e in events if isinstance(e, SpeechStarted)]
    assert len(starts) == 2 and starts[1].t >= turns[0].decided_at - W
    assert turns[1].reason == "silence"


def test_unfinished_partial_waits_longer_before_ending_the_turn() -> None:
    def turn_end_after(partial: str | None) -> float:
        ep = Endpointer(CFG)
        events: list[EndpointEvent] = []
        for frame in frames_from([0.0] * 5 + [0.9] * 30 + [0.0] * windows(2.0)):
            events += ep.push(frame)
            if partial is not None and ep.in_turn:
                ep.update_partial(partial)
        turn = next(e for e in events if isinstance(e, TurnEnded))
        return turn.decided_at - turn.t

    assert turn_end_after(None) == pytest.approx(CFG.end_of_turn, abs=W)
    assert turn_end_after("I want to block my card.") == pytest.approx(CFG.end_of_turn, abs=W)
    assert turn_end_after("I think I lost my debit card and") == pytest.approx(
        CFG.end_of_turn_unfinished, abs=W
    )
    assert turn_end_after("我想查一下余额，然后") == pytest.approx(CFG.end_of_turn_unfinished, abs=W)


def test_customer_resuming_at_the_end_of_turn_boundary_is_not_cut_off() -> None:
    # Speech resumes just before end_of_turn and confirms just after it: still one turn.
    ep = Endpointer(CFG)
    gap = windows(0.55)
    events = feed(ep, frames_from([0.0] * 5 + [0.9] * 20 + [0.0] * gap + [0.9] * 20 + [0.0] * windows(1.0)))
    turns = [e for e in events if isinstance(e, TurnEnded)]
    assert len(turns) == 1
    assert any(isinstance(e, SpeechStarted) and e.continues_turn for e in events)


def test_tick_ends_a_turn_when_audio_stops_arriving() -> None:
    ep = Endpointer(CFG)
    feed(ep, frames_from([0.0] * 5 + [0.9] * 20))
    last_end = 100.0 + 25 * W
    assert ep.tick(last_end + 0.1) == []
    ended = ep.tick(last_end + 0.35)
    assert [type(e) for e in ended] == [SpeechEnded]
    turn = ep.tick(last_end + 0.7)
    assert [type(e) for e in turn] == [TurnEnded]
    assert ep.state is EndpointState.SILENT
    assert ep.tick(last_end + 5.0) == []


def test_hysteresis_keeps_speech_through_weak_windows() -> None:
    ep = Endpointer(CFG)
    probs = [0.0] * 5 + [0.9] * 10 + [0.4] * 15 + [0.9] * 10 + [0.0] * windows(1.0)
    events = feed(ep, frames_from(probs))
    assert [type(e).__name__ for e in events] == ["SpeechStarted", "SpeechEnded", "TurnEnded"]


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="hangover <= end_of_turn"):
        EndpointConfig(hangover=1.0, end_of_turn=0.5)
    with pytest.raises(ValueError, match="neg_threshold"):
        EndpointConfig(threshold=0.3, neg_threshold=0.5)


@pytest.mark.parametrize(
    ("text", "unfinished"),
    [
        ("How do I activate my card?", False),
        ("I lost my card and", True),
        ("I lost my card, um", True),
        ("I'd like to transfer money to", True),
        ("My balance,", True),
        ("Wait...", True),
        ("", False),
        ("转账到我的储蓄账户。", False),
        ("我想查余额，然后", True),
        ("嗯", True),
        ("Band", False),
    ],
)
def test_looks_unfinished(text: str, unfinished: bool) -> None:
    assert looks_unfinished(text) is unfinished


def test_real_speech_pause_within_and_between_turns() -> None:
    detector = VoiceActivityDetector()

    def turns(pause: float) -> list[TurnEnded]:
        audio = np.concatenate(
            [
                np.zeros(8000, np.int16),
                clip("lost_card"),
                np.zeros(int(pause * 16_000), np.int16),
                clip("activate_card"),
                np.zeros(32_000, np.int16),
            ]
        )
        stream, ep = detector.stream(50.0), Endpointer(CFG)
        out: list[TurnEnded] = []
        for i in range(0, len(audio), 320):
            for frame in stream.push(audio[i : i + 320]):
                out += [e for e in ep.push(frame) if isinstance(e, TurnEnded)]
        return out

    one = turns(0.4)
    assert len(one) == 1
    assert one[0].start == pytest.approx(50.5, abs=0.07)  # the clip starts 0.5 s in (+20 ms lead-in)
    two = turns(1.0)
    assert len(two) == 2
    assert two[0].t < two[1].start


@settings(max_examples=150, deadline=None)
@given(
    probabilities=st.lists(st.sampled_from([0.0, 0.2, 0.4, 0.6, 0.95]), min_size=1, max_size=400),
    max_utterance=st.sampled_from([1.0, 3.0, 30.0]),
)
def test_event_sequence_invariants(probabilities: list[float], max_utterance: float) -> None:
    cfg = EndpointConfig(max_utterance=max_utterance)
    ep = Endpointer(cfg)
    in_turn = False
    previous_end = -1.0
    for frame in frames_from(probabilities):
        for event in ep.push(frame):
            assert event.decided_at <= frame.end + 1e-9  # nothing is decided ahead of the audio
            if isinstance(event, SpeechStarted):
                assert event.continues_turn == in_turn
                assert event.t < event.decided_at and event.t >= previous_end - 1e-9
                in_turn = True
            elif isinstance(event, SpeechEnded):
                assert in_turn and event.t <= event.decided_at
            else:
                assert in_turn and event.start <= event.t <= event.decided_at
                assert event.audio.dtype == np.int16
                assert event.audio_start <= event.start
                assert event.audio.size == round(
                    (min(event.decided_at, event.t + cfg.post_roll) - event.audio_start) * 16_000
                )
                assert event.t - event.start <= max_utterance + W
                in_turn = False
                previous_end = event.t
    assert ep.in_turn == in_turn
