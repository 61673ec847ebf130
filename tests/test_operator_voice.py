"""Unit tests on a fake clock: the operator's live voice on a stage (gate, pre-roll, lip-sync,
transcript, no backlog), and a takeover that lets the AI finish the word it is saying."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import numpy as np

from avatar.clock import AUDIO_RATE, FakeClock
from avatar.operator.voice import HANGOVER, MAX_AHEAD, OperatorVoice, VoiceGate, level_db
from avatar.rtc.tracks import StageAudioTrack
from avatar.session import EchoDriver, Session
from avatar.speaker import Speaker
from avatar.stage import Stage
from tests.stage_fakes import PlainRenderer, RampMouth, StillFace, ToneSource

FRAME = AUDIO_RATE // 50  # 20 ms


def make_session(clock: FakeClock, seconds: float = 1.0) -> Session:
    stage = Stage(PlainRenderer(), clock.media_clock(), StillFace(), fps=25)

    def speaker_factory(stage: Stage, emit: Any) -> Speaker:
        return Speaker(stage, ToneSource(seconds), lambda ph, d, lang: RampMouth(d), emit)

    session = Session(stage, speaker_factory, EchoDriver(), "anna")
    session.start()
    return session


def vowel(seconds: float, rate: int, amplitude: float = 9000.0) -> np.ndarray:
    """A voiced, vowel-like sound: a 120 Hz pulse train through two formant resonances."""
    t = np.arange(int(seconds * rate)) / rate
    wave = sum(np.sin(2 * np.pi * 120 * k * t) / k for k in range(1, 30))
    shaped = wave * (1 + 0.8 * np.sin(2 * np.pi * 700 * t)) * (1 + 0.5 * np.sin(2 * np.pi * 1200 * t))
    shaped = shaped / np.abs(shaped).max() * amplitude
    return shaped.astype(np.int16)


def frames(audio: np.ndarray, size: int) -> list[np.ndarray]:
    return [audio[i : i + size] for i in range(0, len(audio) - size + 1, size)]


def test_gate_opens_on_speech_and_closes_after_the_hangover() -> None:
    gate = VoiceGate()
    for _ in range(50):
        assert not gate.step(-70.0, 0.02)  # room noise
    assert gate.step(-20.0, 0.02)
    quiet = 0.0
    while gate.step(-70.0, 0.02):
        quiet += 0.02
    assert abs(quiet + 0.02 - HANGOVER) < 0.021
    assert not gate.step(-52.0, 0.02)  # never speech below the absolute minimum
    assert level_db(np.zeros(10, np.int16)) == -120.0
    assert abs(level_db(np.full(100, 16384, np.int16)) + 6.02) < 0.01


async def test_voice_goes_on_the_stage_with_lip_sync_and_into_the_transcript() -> None:
    clock = FakeClock()
    session = make_session(clock)
    said: list[np.ndarray] = []

    async def transcribe(audio16k: np.ndarray) -> str | None:
        said.append(audio16k)
        return "hello from alice"

    voice = OperatorVoice(session, "alice", transcribe, wall_clock=clock.now)
    silence48, silence16 = np.zeros(FRAME, np.int16), np.zeros(FRAME // 3, np.int16)
    speech48, speech16 = vowel(0.6, AUDIO_RATE), vowel(0.6, 16_000)
    for _ in range(10):  # the operator listens: nothing goes on the stage
        voice.feed(silence48 + np.int16(3), silence16)
        await clock.run_for(0.02)
    assert voice.frames_scheduled == 0 and session.stage.speaking_until() == 0.0
    opened_at = session.stage.clock.time()
    for a, b in zip(frames(speech48, FRAME), frames(speech16, FRAME // 3), strict=True):
        voice.feed(a, b)
        await clock.run_for(0.02)
    # Pre-roll plus the speech are on the stage, in order, right behind the playhead.
    assert voice.frames_scheduled >= 30 and voice.frames_dropped == 0
    until = session.stage.speaking_until()
    assert 0 < until - session.stage.clock.time() <= MAX_AHEAD
    # The mouth follows the sound: open during the vowel (the frame playing now).
    now = session.stage.clock.time()
    assert session.stage.face_at(now).mouth.open > 0.2
    assert abs(opened_at - now) < 1.0
    for _ in range(40):  # quiet again: the gate closes, the utterance is recorded
        voice.feed(silence48, silence16)
        await clock.run_for(0.02)
    for _ in range(20):
        await asyncio.sleep(0)
    assert said and len(said[0]) >= 0.6 * 16_000
    entry = session.transcript[-1]
    assert (entry.speaker, entry.text, entry.meta) == ("alice", "hello from alice", {"voice": True})
    assert entry.started is not None and entry.at - entry.started >= 0.6
    assert session.stage.face_at(session.stage.clock.time() + 0.5).mouth.open == 0.0  # at rest
    await session.close()


async def test_voice_is_dropped_rather_than_queued_behind_a_busy_stage() -> None:
    clock = FakeClock()
    session = make_session(clock, seconds=3.0)
    voice = OperatorVoice(session, "alice", None, wall_clock=clock.now)
    session.say("a typed line that lasts three seconds")
    await clock.run_for(0.1)
    for a in frames(vowel(0.5, AUDIO_RATE), FRAME):
        voice.feed(a, a[::3])
        await clock.run_for(0.02)
    assert voice.frames_dropped > 0 and voice.frames_scheduled == 0
    voice.end()
    for _ in range(20):
        await asyncio.sleep(0)
    assert session.transcript[-1].text == "[voice, 0.5 s, not transcribed]"  # recorded all the same
    await session.close()


async def test_finish_word_stops_at_the_end_of_the_word_being_said() -> None:
    clock = FakeClock()
    session = make_session(clock, seconds=1.0)
    track = StageAudioTrack(session.stage)  # reads 20 ms ahead of the clock, as on a call

    async def play() -> None:
        with contextlib.suppress(Exception):
            while True:
                await track.recv()

    player = asyncio.create_task(play())
    line = session.say("one two three four")  # four words of 0.25 s each
    await clock.run_for(0.04 + 0.3)  # into "two"
    seg = line.segments[0]
    assert session.word_end() == seg.start_time + 0.5
    finishing = asyncio.create_task(session.finish_word())
    await clock.run_for(0.3)
    cut = await finishing
    assert cut is line
    assert seg.cut_at is not None
    boundary = seg.start + int(0.5 * AUDIO_RATE)
    # The boundary, plus at most the 20 ms frame the track has read ahead and the 10 ms fade.
    assert boundary <= seg.cut_at <= boundary + int(0.030 * AUDIO_RATE)
    assert line.heard_text() == "one two"
    await clock.run_for(0.2)
    assert session.transcript[-1].text == "one two" and session.transcript[-1].interrupted
    # Nothing playing: it stops at once.
    assert session.word_end() is None
    assert await session.finish_word() is None
    track.stop()
    player.cancel()
    await session.close()
