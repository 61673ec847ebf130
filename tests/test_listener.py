"""The listening loop of a session: the customer's voice as 48 kHz WebRTC frames in, turns,
barge-in, echo, recognition failures and silence out. Media time is a ``FakeClock``; each
recognition is awaited before the clock moves on (an instant recogniser, the case that
tests turn-taking hardest). Last, the same loop over a real aiortc call."""

from __future__ import annotations

import asyncio
import json
import math
import time
import wave
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from aiohttp.test_utils import TestClient
from aiortc import MediaStreamTrack
from scipy.signal import resample_poly

from avatar.clock import AUDIO_RATE, FakeClock
from avatar.listener import (
    LINES,
    RECOGNITION_FAILED,
    BargeInRecord,
    Listener,
    ListenerConfig,
    TurnRecord,
    reads_as_question,
    reads_finished,
    tighten_receive_buffer,
)
from avatar.server.engines import Engines, brain_vocabulary
from avatar.session import Session
from avatar.speaker import Speaker
from avatar.speech.asr.base import ASRError, SpeechRecognizer, Transcript
from avatar.speech.bargein import BargeInConfig
from avatar.speech.vad import VoiceActivityDetector
from avatar.stage import Stage
from avatar.timeline import Phoneme, SpeechChunk, Word
from tests.rtc_client import RtcCustomer
from tests.stage_fakes import InlineExecutor, PlainRenderer, RampMouth, StillFace, ToneSource, tone_chunk

SPEECH = Path(__file__).parent / "data" / "speech"
FRAME = AUDIO_RATE // 50  # 20 ms, as aiortc's Opus decoder delivers


def clip(name: str) -> np.ndarray:
    with wave.open(str(SPEECH / f"{name}.wav"), "rb") as wav:
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.int16)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * 16_000), np.int16)


def to_48k(audio16: np.ndarray) -> np.ndarray:
    return resample_poly(audio16.astype(np.float64), 3, 1)


def stereo_frame(mono48: np.ndarray) -> av.AudioFrame:
    """A 20 ms packed s16 stereo frame at 48 kHz, the shape of what aiortc hands the server."""
    pcm = np.clip(np.rint(mono48), -32768, 32767).astype(np.int16)
    frame = av.AudioFrame.from_ndarray(np.repeat(pcm, 2).reshape(1, -1), format="s16", layout="stereo")
    frame.sample_rate = AUDIO_RATE
    return frame


def words(text: str) -> list[str]:
    return "".join(c if c.isalnum() or c.isspace() else " " for c in text.lower()).split()


class RecordingDriver:
    """Records what reaches the driver; optionally answers."""

    name = "recording"

    def __init__(self, answer: Callable[[str], str | None] | None = None) -> None:
        self.texts: list[str] = []
        self.answer = answer

    async def on_customer_text(self, session: Session, text: str) -> None:
        self.texts.append(text)
        reply = self.answer(text) if self.answer else None
        if reply:
            session.say(reply)


class Instant:
    """Wraps a recogniser; ``settle`` waits for every call in flight (the fake clock stands still
    meanwhile, so recognition takes no media time)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.supports_partial = inner.supports_partial
        self.calls: list[tuple[float, bool]] = []  # (audio seconds, partial)
        self._inflight: set[asyncio.Future[Transcript]] = set()

    async def transcribe(
        self,
        audio16k: np.ndarray,
        lang: str | None = None,
        prompt: str | None = None,
        *,
        partial: bool = False,
    ) -> Transcript:
        self.calls.append((audio16k.size / 16_000, partial))
        future = asyncio.ensure_future(self.inner.transcribe(audio16k, lang, prompt, partial=partial))
        self._inflight.add(future)
        try:
            return await asyncio.shield(future)
        finally:
            self._inflight.discard(future)

    async def settle(self) -> None:
        while self._inflight:
            await asyncio.wait(set(self._inflight))
            for _ in range(5):
                await asyncio.sleep(0)

    async def aclose(self) -> None:
        return None


class Scripted:
    """A recogniser that answers with ``text`` (or raises ``error``) for any audio."""

    name = "scripted"
    supports_partial = False

    def __init__(self, text: str = "", error: Exception | None = None) -> None:
        self.text = text
        self.error = error

    async def transcribe(
        self,
        audio16k: np.ndarray,
        lang: str | None = None,
        prompt: str | None = None,
        *,
        partial: bool = False,
    ) -> Transcript:
        if self.error is not None:
            raise self.error
        return Transcript(self.read(audio16k), "en", audio16k.size / 16_000, partial=partial)

    def read(self, audio16k: np.ndarray) -> str:
        """The words for ``audio16k``."""
        return self.text

    async def aclose(self) -> None:
        return None


class LineSource:
    """Speaks each line as one tone (0.1 s per word) and records whole lines."""

    def __init__(self) -> None:
        self.requests: list[str] = []

    async def stream(self, text: str, lang: str | None) -> AsyncIterator[SpeechChunk]:
        self.requests.append(text)
        yield tone_chunk(text, 0.1 * len(text.split()))


class ClipSource:
    """Speaks any line with a recorded voice clip (real speech, so an echo of it sounds like
    speech to the VAD)."""

    def __init__(self, name: str) -> None:
        self.audio = clip(name)
        self.requests: list[str] = []

    async def stream(self, text: str, lang: str | None) -> AsyncIterator[SpeechChunk]:
        self.requests.append(text)
        duration = self.audio.size / 16_000
        split = text.split()
        step = duration / len(split)
        yield SpeechChunk(
            text=text,
            audio=self.audio,
            sample_rate=16_000,
            phonemes=[Phoneme("a", 0.0, duration)],
            words=[Word(w, i * step, (i + 1) * step) for i, w in enumerate(split)],
            lang="en",
        )


@dataclass
class Rig:
    fake: FakeClock
    session: Session
    listener: Listener
    driver: RecordingDriver
    source: Any
    recognizer: Instant
    events: list[dict[str, Any]] = field(default_factory=list)
    turns: list[TurnRecord] = field(default_factory=list)
    barge_ins: list[BargeInRecord] = field(default_factory=list)
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(7))

    async def play(
        self,
        audio16: np.ndarray,
        echo_delay: float | None = None,
        echo_db: float = -10.0,
        noise_db: float = -65.0,
        late: Callable[[int], float | None] | None = None,
    ) -> None:
        """Send ``audio16`` as the customer's microphone, 20 ms at a time in media time, mixed
        with a little noise and, with ``echo_delay``, the avatar's own voice coming back.
        ``late(k)``: how late the k-th frame arrives (network jitter), ``None`` if it is lost."""
        mic = to_48k(audio16)
        mic = np.concatenate([mic, np.zeros(-mic.size % FRAME)])
        stage = self.session.stage
        for k in range(0, mic.size, FRAME):
            self.fake.advance(FRAME / AUDIO_RATE)
            chunk = mic[k : k + FRAME] + self.rng.standard_normal(FRAME) * 32768 * 10 ** (noise_db / 20)
            if echo_delay is not None:
                heard_from = stage.clock.sample() - FRAME - int(echo_delay * AUDIO_RATE)
                if heard_from >= 0:
                    chunk += stage.read_audio(heard_from, FRAME) * 10 ** (echo_db / 20)
            delay = late(k // FRAME) if late is not None else 0.0
            if delay is None:
                continue
            await self.listener.hear(stereo_frame(chunk), at=stage.clock.time() + delay)
            await self.settle()

    async def settle(self) -> None:
        for _ in range(5):
            await asyncio.sleep(0)
        await self.recognizer.settle()
        for _ in range(5):
            await asyncio.sleep(0)

    async def close(self) -> None:
        await self.session.close()

    def said(self) -> list[str]:
        return list(self.source.requests)


def make_rig(
    vad: VoiceActivityDetector,
    recognizer: Any,
    *,
    config: ListenerConfig | None = None,
    source: Any = None,
    answer: Callable[[str], str | None] | None = None,
) -> Rig:
    fake = FakeClock()
    stage = Stage(PlainRenderer(), fake.media_clock(), StillFace())
    source = source or ToneSource(seconds=1.0)
    driver = RecordingDriver(answer)

    def speaker_factory(st: Stage, emit: Callable[[dict[str, Any]], None]) -> Speaker:
        return Speaker(st, source, lambda phonemes, duration, lang: RampMouth(duration), emit)

    session = Session(stage, speaker_factory, driver, "test")
    instant = Instant(recognizer)
    listener = Listener(session, vad, instant, config or ListenerConfig(), executor=InlineExecutor())
    rig = Rig(fake, session, listener, driver, source, instant)
    session.add_sink(lambda message: rig.events.append(message))
    listener.on_turn = rig.turns.append
    listener.on_barge_in = rig.barge_ins.append
    session.start()
    listener.start()
    return rig


@pytest.fixture(scope="module")
def vad(engines: Engines) -> VoiceActivityDetector:
    return engines.vad()


@pytest.fixture(scope="module")
def whisper(engines: Engines) -> SpeechRecognizer:
    return engines.recognizer()


def test_reads_finished() -> None:
    assert reads_finished("How do I activate my new card?")
    assert reads_finished("What is my account balance.")
    assert not reads_finished("I think I lost my debit card in.")  # Whisper's full stop on "...card and"
    assert not reads_finished("I lost my card and...")
    assert not reads_finished("How do I activate")
    assert not reads_finished("")


def test_reads_as_question() -> None:
    assert reads_as_question("How do I activate my new card?")
    assert reads_as_question("What is my account balance.")  # Whisper's full stop on a question
    assert reads_as_question("I lost my card. Can you block it.")
    assert reads_as_question("我的卡丢了，可以冻结吗。") and reads_as_question("余额是多少？")
    assert not reads_as_question("I lost my debit card.")
    assert not reads_as_question("Please cancel the direct debit to my gym!")
    assert not reads_as_question("How do I activate")  # not finished
    assert not reads_as_question("")


class Speculating(Scripted):
    """``Scripted``, recognising at pauses as engines with partial transcripts do."""

    supports_partial = True


@pytest.mark.parametrize(
    ("text", "turns"),
    [("How do I activate my new card?", 2), ("I lost my debit card.", 1), ("I lost my card and", 1)],
)
async def test_a_pause_ends_the_turn_sooner_after_a_question_than_after_a_statement(
    vad: VoiceActivityDetector, text: str, turns: int
) -> None:
    """The same 0.45 s pause after words that read as a question ends the turn
    (``commit_question``, 0.2 s of silence after the end of the sound); after a statement
    (``commit_silence``, 0.5 s) or unfinished words the customer may go on, and does."""
    rig = make_rig(vad, Speculating(text))
    try:
        audio = np.concatenate([silence(0.3), clip("lost_card"), silence(0.45), clip("account_balance")])
        await rig.play(np.concatenate([audio, silence(2.0)]))
        assert len(rig.driver.texts) == turns, [(t.how, t.speech_end) for t in rig.turns]
        first = rig.turns[0]
        if turns == 2:
            assert first.how == "early" and first.decided_at - first.speech_end < 0.3
    finally:
        await rig.close()


class CountingBrain:
    """A pure stand-in for the dialogue brain: answers every line, writes the turn into the
    context it is given (as the real one does) and counts its calls."""

    rephraser = None

    def __init__(self) -> None:
        self.calls: list[str] = []

    def reply(self, context: Any, text: str) -> Any:
        from avatar.brain.brain import Reply

        self.calls.append(text)
        context.add("customer", text)
        context.add("assistant", f"About: {text}")
        return Reply("answer", "card_activation", 0.9, f"About: {text}", 0.0, None, [], "en")

    async def areply(self, context: Any, text: str) -> Any:
        return self.reply(context, text)


@pytest.mark.parametrize("moved_on", [False, True])
async def test_the_brain_decides_its_answer_while_the_turn_is_confirmed(
    vad: VoiceActivityDetector, moved_on: bool
) -> None:
    """The speculative transcript reads finished: the brain decides the answer then, on a copy of
    the dialogue, and the confirmed turn only says it. If the dialogue moved on meanwhile (an
    operator's line noted), the answer is decided again on the real one."""
    from types import SimpleNamespace

    from avatar.drivers import BrainDriver

    rig = make_rig(vad, Speculating("How do I activate my new card?"), source=LineSource())
    brain = CountingBrain()
    driver = BrainDriver(SimpleNamespace(brain=brain, brain_loading=None))
    rig.session.driver = driver
    original, prepared = driver.prepare, []

    def spy(session: Session, text: str) -> None:
        prepared.append(text)
        original(session, text)
        if moved_on and len(prepared) == 1:
            driver.note("assistant", "An operator's line.")

    driver.prepare = spy  # type: ignore[method-assign]
    try:
        await rig.play(np.concatenate([silence(0.3), clip("activate_card"), silence(1.5)]))
        (turn,) = rig.turns
        assert turn.how == "early" and turn.outcome == "answered"
        # The scripted recogniser reads every speculation as the whole question, those started
        # at quiet moments inside words too; the brain still decides only once.
        assert prepared and set(prepared) == {"How do I activate my new card?"}
        # Decided once, ahead, and that answer said; decided again when the dialogue moved on.
        assert brain.calls == ["How do I activate my new card?"] * (2 if moved_on else 1)
        history = [(t.role, t.text) for t in driver.context.history]
        assert history[-2:] == [
            ("customer", "How do I activate my new card?"),
            ("assistant", "About: How do I activate my new card?"),
        ]
        assert len(history) == (3 if moved_on else 2)  # one answered turn, nothing speculative extra
        assert rig.said() == ["About: How do I activate my new card?"]
    finally:
        await rig.close()


class ByLength(Speculating):
    """Reads audio up to ``cut`` seconds long as ``short``, longer audio as ``text``."""

    def __init__(self, short: str, text: str, cut: float) -> None:
        super().__init__(text)
        self.short, self.cut = short, cut

    def read(self, audio16k: np.ndarray) -> str:
        return self.short if audio16k.size / 16_000 <= self.cut else self.text


async def test_recognition_starts_where_the_sound_ends_and_the_turn_ends_on_time(
    vad: VoiceActivityDetector,
) -> None:
    """Silero calls speech for about 0.1 s after the last loud sample; the first quiet window
    after loud speech starts the recognition instead, and a finished question ends the turn
    exactly ``commit_question`` after the end of the sound (a timer, not the next window)."""
    rig = make_rig(vad, Speculating("How do I activate my new card?"))
    try:
        lead = silence(0.3)
        speech = clip("activate_card")
        loud = np.flatnonzero(np.abs(speech.astype(np.int32)) > 300)
        sound_end = (lead.size + loud[-1] + 1) / 16_000  # media time: the rig plays from 0
        await rig.play(np.concatenate([lead, speech, silence(1.5)]))
        (turn,) = rig.turns
        assert turn.how == "early" and rig.driver.texts == ["How do I activate my new card?"]
        assert sound_end <= turn.speech_end <= sound_end + 0.07
        assert turn.recognition_started - sound_end <= 0.07 + 0.02  # + one 20 ms frame to arrive
        assert turn.decided_at - turn.speech_end == pytest.approx(0.2, abs=0.021)
    finally:
        await rig.close()


async def test_speech_after_a_quiet_moment_makes_its_recognition_stale(vad: VoiceActivityDetector) -> None:
    """A 0.1 s gap between two phrases starts a recognition of the first (it reads as a finished
    statement); the loud speech that follows makes it stale, so the turn is the whole of both."""
    first = np.concatenate([silence(0.3), clip("lost_card")])
    whole = "I lost my debit card. What is my account balance?"
    rig = make_rig(vad, ByLength("I lost my debit card.", whole, cut=first.size / 16_000 + 0.15))
    try:
        await rig.play(np.concatenate([first, silence(0.1), clip("account_balance"), silence(1.5)]))
        assert rig.driver.texts == [whole]
        assert any(
            not partial and seconds <= first.size / 16_000 + 0.15 for seconds, partial in rig.recognizer.calls
        )
    finally:
        await rig.close()


async def test_a_blip_in_the_pause_leaves_the_turns_recognition_reused(vad: VoiceActivityDetector) -> None:
    """A click or breath in the pause after the customer's words, shorter than ``min_speech``,
    neither resumes the turn nor postpones its end: the turn's audio is what was recognised at
    the end of speech, so that recognition is the turn's, not run again on the same audio."""
    rig = make_rig(vad, Scripted("I lost my debit card"))
    try:
        speech = np.concatenate([silence(0.3), clip("lost_card")])
        sound_end = int(np.flatnonzero(np.abs(speech.astype(np.int32)) > 300)[-1]) + 1
        uh = clip("uh_huh")
        onset = int(np.flatnonzero(np.abs(uh.astype(np.int32)) > 1000)[0]) + 800
        blip = uh[onset : onset + 1280]  # 0.08 s: two windows the VAD calls speech, then silence
        # The blip 0.5 s after the sound ends: after the VAD's end of speech (its hangover), before
        # the end of the turn.
        await rig.play(np.concatenate([speech[:sound_end], silence(0.5), blip, silence(1.5)]))
        (turn,) = rig.turns
        assert rig.listener._last_voice > turn.speech_end + 0.3  # the VAD heard the blip, in the pause
        assert turn.how == "silence" and turn.outcome == "answered"
        assert turn.reused_speculation and [partial for _, partial in rig.recognizer.calls] == [False]
        assert rig.driver.texts == ["I lost my debit card"]
    finally:
        await rig.close()


async def test_a_spoken_question_becomes_one_customer_line(
    vad: VoiceActivityDetector, whisper: SpeechRecognizer
) -> None:
    rig = make_rig(vad, whisper)
    try:
        await rig.play(np.concatenate([silence(0.5), clip("activate_card"), silence(1.5)]))
        assert len(rig.driver.texts) == 1
        assert words(rig.driver.texts[0]) == ["how", "do", "i", "activate", "my", "new", "card"]
        finals = [
            e for e in rig.events if e["type"] == "transcript" and e["speaker"] == "customer" and e["final"]
        ]
        assert [e["text"] for e in finals] == rig.driver.texts
        assert [e.speaker for e in rig.session.transcript] == ["customer"]
        # The question reads finished: the turn was taken on its words, with the speculative
        # recognition started in the pause reused rather than recognising again.
        (turn,) = rig.turns
        assert turn.how == "early" and turn.reused_speculation and turn.outcome == "answered"
        assert turn.decided_at - turn.speech_end < rig.listener.config.endpoint.end_of_turn
        finals_asked = [seconds for seconds, partial in rig.recognizer.calls if not partial]
        assert finals_asked, "recognition ran"
        states = [e["state"] for e in rig.events if e["type"] == "state"]
        assert states[:2] == ["listening", "thinking"] and states[-1] == "idle"
    finally:
        await rig.close()


async def test_a_pause_in_an_unfinished_sentence_does_not_split_the_turn(
    vad: VoiceActivityDetector, whisper: SpeechRecognizer
) -> None:
    rig = make_rig(vad, whisper)
    try:
        # "I think I lost my debit card and" ... 0.45 s ... "What is my account balance?"
        audio = np.concatenate(
            [silence(0.3), clip("lost_card"), silence(0.45), clip("account_balance"), silence(2.0)]
        )
        await rig.play(audio)
        assert len(rig.driver.texts) == 1, rig.driver.texts
        said = words(rig.driver.texts[0])
        assert {"lost", "debit", "card", "account", "balance"} <= set(said)
        assert said.index("debit") < said.index("balance")
        # The first half was recognised in the pause (a live partial transcript) but not taken
        # as the turn: its words trail off.
        partials = [e["text"] for e in rig.events if e["type"] == "transcript" and not e["final"]]
        assert any("debit card" in p.lower() and "balance" not in p.lower() for p in partials)
    finally:
        await rig.close()


async def test_barge_in_cuts_the_avatar_and_the_transcript_keeps_what_was_heard(
    vad: VoiceActivityDetector,
) -> None:
    reply = "one two three four. five six seven eight. nine ten eleven twelve."
    rig = make_rig(vad, Scripted("Wait, stop. I have another question."))
    try:
        rig.session.say(reply)
        await rig.play(silence(1.3))
        assert rig.session.state == "speaking"
        await rig.play(np.concatenate([clip("stop_please"), silence(1.5)]))
        (barge,) = rig.barge_ins
        assert barge.interrupted_at >= barge.onset
        heard = barge.cut_text or ""
        assert heard.startswith("one two three four") and heard != reply.replace(".", "")
        # Nothing more of the reply plays after the cut (the driver here answers nothing).
        stage = rig.session.stage
        after = int((barge.interrupted_at + 0.05) * AUDIO_RATE)
        assert not stage.read_audio(after, stage.clock.sample() - after).any()
        # The transcript: the reply as far as it was heard, marked interrupted; then the customer.
        entries = [(e.speaker, e.text, e.interrupted) for e in rig.session.transcript]
        assert entries == [("ai", heard, True), ("customer", "Wait, stop. I have another question.", False)]
        assert rig.driver.texts == ["Wait, stop. I have another question."]
        ai_events = [e for e in rig.events if e["type"] == "transcript" and e["speaker"] == "ai"]
        assert ai_events and ai_events[0]["interrupted"] is True
    finally:
        await rig.close()


async def test_the_avatars_own_voice_coming_back_does_not_interrupt_it(vad: VoiceActivityDetector) -> None:
    line = "You can activate your new card in the mobile app"
    outcomes = {}
    for guarded in (True, False):
        config = ListenerConfig(bargein=BargeInConfig(echo_guard=guarded))
        rig = make_rig(
            vad, Scripted("You can activate your new card."), config=config, source=ClipSource("avatar_reply")
        )
        try:
            rig.session.say(line)
            await rig.play(silence(9.0), echo_delay=0.12, echo_db=-10.0)
            outcomes[guarded] = (list(rig.barge_ins), list(rig.driver.texts), list(rig.session.transcript))
        finally:
            await rig.close()
    barge_ins, answered, transcript = outcomes[True]
    assert barge_ins == [] and answered == []
    assert [(e.speaker, e.text, e.interrupted) for e in transcript] == [("ai", line, False)]
    # The same leak without the server-side guard would have cut the avatar off.
    assert outcomes[False][0], "the echo is loud enough to matter"


async def test_a_backchannel_over_the_avatar_is_not_a_turn(vad: VoiceActivityDetector) -> None:
    config = ListenerConfig(bargein=BargeInConfig(ignore_backchannel=True))
    rig = make_rig(vad, Scripted("Uh-huh."), config=config)
    try:
        rig.session.say("one two three four. five six seven eight. nine ten eleven twelve.")
        await rig.play(silence(1.0))
        await rig.play(np.concatenate([clip("uh_huh"), silence(1.2)]))
        assert rig.barge_ins == [] and rig.driver.texts == []
        assert rig.session.state == "speaking"
        assert [t.outcome for t in rig.turns] == ["dropped"]
    finally:
        await rig.close()


async def test_thinking_ends_when_an_answer_queued_behind_another_line_has_been_said(
    vad: VoiceActivityDetector,
) -> None:
    """A turn answered while the avatar is already speaking (a customer who went on after a turn
    taken early, the barge-in swallowed by the echo guard) queues its answer behind the line
    being said: no new "speaking" state marks its start, yet the session must not stay
    "thinking" once everything has been said (the silence prompts wait while it does)."""
    rig = make_rig(vad, Scripted("Hello."), source=LineSource())
    try:
        rig.session.say("one two three four five six")
        await rig.play(silence(0.3))
        assert rig.session.state == "speaking"
        rig.session.set_activity("thinking")  # what the listener's turn sets; its answer is queued
        rig.session.say("seven eight nine ten eleven twelve")
        await rig.play(silence(0.6))
        assert rig.session.state == "speaking" and rig.session.activity == "thinking"
        await rig.play(silence(1.5))
        assert not rig.session.speaker.busy and rig.session.state == "idle"
    finally:
        await rig.close()


async def test_inbound_audio_is_timed_by_its_least_delayed_frames(vad: VoiceActivityDetector) -> None:
    """Jitter only delays frames: speech is stamped at the pace of the earliest arrivals, not
    of a late first frame; after frames are lost the timeline starts again where they resume."""
    audio = np.concatenate([silence(1.0), clip("account_balance"), silence(1.5)])
    first_loud = (
        1.0 + float(np.flatnonzero(np.abs(clip("account_balance").astype(np.int32)) > 300)[0]) / 16_000
    )
    lost = range(10, 35)  # 0.5 s of silence never arrives
    cases: dict[str, tuple[Callable[[int], float | None], float]] = {
        "on time": (lambda k: 0.0, first_loud),
        "late first frames": (lambda k: 0.1 if k < 3 else 0.0, first_loud),
        "jitter": (lambda k: 0.03 * (k % 4), first_loud),
        "lost frames": (lambda k: None if k in lost else 0.0, first_loud),
    }
    for name, (late, expected) in cases.items():
        rig = make_rig(vad, Scripted("What is my account balance?"))
        try:
            start = rig.session.stage.clock.time()
            await rig.play(audio, late=late)
            (turn,) = rig.turns
            # The VAD calls speech from the window holding the first loud sample or the next.
            assert expected - 0.032 <= turn.speech_start - start <= expected + 0.064, name
        finally:
            await rig.close()


async def test_a_failing_recognizer_apologises_and_the_session_goes_on(vad: VoiceActivityDetector) -> None:
    rig = make_rig(
        vad, Scripted(error=ASRError("the transcription endpoint answered HTTP 503")), source=LineSource()
    )
    try:
        await rig.play(np.concatenate([clip("account_balance"), silence(1.5)]))
        assert rig.driver.texts == []
        errors = [e for e in rig.events if e["type"] == "error"]
        assert [e["message"] for e in errors] == [RECOGNITION_FAILED]
        assert rig.said() == [LINES["apology"]["en"]]
        assert [t.outcome for t in rig.turns] == ["failed"]
        # Recognition comes back: the next turn is answered as usual.
        rig.recognizer.inner = Scripted("What is my account balance?")
        await rig.play(np.concatenate([silence(1.0), clip("account_balance"), silence(1.5)]))
        assert rig.driver.texts == ["What is my account balance?"]
    finally:
        await rig.close()


async def test_a_silent_customer_is_prompted_then_told_goodbye(vad: VoiceActivityDetector) -> None:
    config = ListenerConfig(silence_prompt_after=5.0, silence_close_after=12.0)
    rig = make_rig(vad, Scripted("Hello."), config=config, source=LineSource())
    try:
        prompt, goodbye = LINES["prompt"]["en"], LINES["goodbye"]["en"]
        await rig.play(silence(4.5))
        assert rig.said() == []
        await rig.play(silence(1.0))
        assert rig.said() == [prompt]
        await rig.play(silence(6.0))  # 11.5 s of silence: the prompt is not repeated
        assert len(rig.said()) == 1
        await rig.play(silence(1.0))
        assert rig.said() == [prompt, goodbye]
        await rig.play(silence(15.0))  # nothing more; the session stays open
        assert len(rig.said()) == 2 and not rig.session.closed.is_set()
        # The customer speaks again: the timers start over.
        await rig.play(np.concatenate([clip("account_balance"), silence(1.5)]))
        assert rig.driver.texts == ["Hello."]
        mark = len(rig.said())
        await rig.play(silence(2.5))  # about 4 s since the customer spoke
        assert len(rig.said()) == mark
        await rig.play(silence(2.0))  # 5 s since the turn was over
        assert len(rig.said()) == mark + 1 and rig.said()[-1] == prompt
    finally:
        await rig.close()


async def test_the_avatar_stops_when_the_customers_audio_stops_arriving(vad: VoiceActivityDetector) -> None:
    """The customer's audio stops arriving while the avatar speaks (their network died; a muted
    microphone still sends silence): after ``link_timeout`` the avatar stops, and the transcript
    keeps the line as heard up to the last audio that came, marked interrupted, not as said
    whole into the void. When audio comes back, the session carries on."""
    rig = make_rig(vad, Scripted(""), source=LineSource())  # 0.1 s per word
    try:
        await rig.play(silence(0.5))
        rig.session.say(" ".join(f"word{i}" for i in range(60)))  # 6 s
        await rig.play(silence(1.0))  # a second of it while the customer's audio flows
        lost_at = rig.session.stage.clock.time()
        await rig.fake.run_for(2.5)
        assert rig.session.link_lost_at is None and rig.session.speaker.state == "speaking"
        await rig.fake.run_for(1.0)  # no audio for 3.5 s: past link_timeout (3 s)
        assert rig.session.link_lost_at == pytest.approx(lost_at, abs=0.03)
        assert rig.session.speaker.state == "idle"
        await rig.settle()
        entry = rig.session.transcript[-1]
        assert entry.speaker == "ai" and entry.interrupted
        assert 6 <= len(entry.text.split()) <= 12  # about 1 s of words, not the 4 s sent since
        # A line whose recognition finished after the link went: kept, not answered into the void.
        await rig.session.customer_text("What is my balance?")
        assert rig.driver.texts == [] and rig.session.transcript[-1].text == "What is my balance?"
        # Anything on the data channel is a sign of life too.
        rig.session.handle_message(json.dumps({"type": "ping"}))
        assert rig.session.link_lost_at is None
        rig.session.lose_link(rig.session.stage.clock.time())
        await rig.play(silence(0.2))
        assert rig.session.link_lost_at is None
    finally:
        await rig.close()


async def test_lines_said_after_the_last_sign_of_life_are_named_when_the_link_is_lost(
    vad: VoiceActivityDetector,
) -> None:
    """A short line said and finished after the customer's audio stopped is recorded as said
    (the loss is not known yet); when it is, the link listeners learn which lines those were."""
    rig = make_rig(vad, Scripted(""), source=LineSource())
    told: list[tuple[list[str], list[str]]] = []
    rig.session.link_listeners.append(
        lambda session, dropped, late: told.append(([x.text for x in dropped], [e.text for e in late]))
    )
    try:
        rig.session.say("Before the cut.")
        await rig.play(silence(1.0))  # said and heard while the customer's audio flows
        rig.session.say("Three short words.")  # the customer's audio has just stopped
        await rig.fake.run_for(3.5)
        assert rig.session.link_lost_at is not None
        assert [(e.text, e.interrupted) for e in rig.session.transcript] == [
            ("Before the cut.", False),
            ("Three short words.", False),
        ]
        assert told == [([], ["Three short words."])]
    finally:
        await rig.close()


async def test_silence_timers_run_without_microphone_frames(vad: VoiceActivityDetector) -> None:
    """A stalled microphone (no frames at all) still gets the prompt: the timers run on the
    stage clock, not on inbound audio."""
    config = ListenerConfig(silence_prompt_after=3.0, silence_close_after=0.0)
    rig = make_rig(vad, Scripted("Hello."), config=config, source=LineSource())
    try:
        await rig.fake.run_for(3.5, step=0.05)
        await rig.settle()
        assert rig.said() == [LINES["prompt"]["en"]]
    finally:
        await rig.close()


def test_the_recognition_prompt_puts_knowledge_base_terms_first(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from avatar.brain.kb import Entry
    from tests.conftest import make_settings

    def entry(topic: str, lang: str, product: str, scenario: str) -> Entry:
        return Entry(topic, ("q",), "a", lang, product_name=product, scenario_name=scenario)

    kb = SimpleNamespace(
        entries={
            "a": entry("a", "en", "Premier Rewards card", "Cashback"),
            "b": entry("b", "en", "Premier Rewards card", "Lounge access"),
            "c": entry("c", "zh", "信用卡", "账单与还款"),
        }
    )
    assert brain_vocabulary(SimpleNamespace(kb=kb), "en") == [
        "Premier Rewards card",
        "Cashback",
        "Lounge access",
    ]
    assert brain_vocabulary(SimpleNamespace(vocabulary=lambda lang: [f"{lang} term"]), "zh") == ["zh term"]
    assert brain_vocabulary(None, "en") == []
    engines = Engines.build(make_settings(tmp_path))
    try:
        assert engines.asr_prompt("en").startswith("Bank customer service call about account balance, ")
        engines.brain = SimpleNamespace(kb=kb)  # the brain finished loading after the first turns
        english = engines.asr_prompt("en")
        assert english.startswith(
            "Bank customer service call about Premier Rewards card, Cashback, Lounge access, "
        )
        assert "account balance" in english  # the built-in banking words follow
        assert engines.asr_prompt("zh-CN").startswith("以下是普通话的银行客服对话，关于信用卡、账单与还款、")
    finally:
        engines.close()


# -- a real call -------------------------------------------------------------------------------
class WavMicrophone(MediaStreamTrack):
    """A microphone that says ``audio16`` (16 kHz) once, then stays silent, in real time."""

    kind = "audio"

    def __init__(self, audio16: np.ndarray) -> None:
        super().__init__()
        self.samples = np.clip(np.rint(to_48k(audio16)), -32768, 32767).astype(np.int16)
        self.sent = 0
        self._start: float | None = None

    async def recv(self) -> av.AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        wait = self._start + self.sent / AUDIO_RATE - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        chunk = self.samples[self.sent : self.sent + FRAME]
        chunk = np.concatenate([chunk, np.zeros(FRAME - chunk.size, np.int16)])
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = AUDIO_RATE
        frame.pts = self.sent
        frame.time_base = Fraction(1, AUDIO_RATE)
        self.sent += FRAME
        return frame


async def test_the_receive_buffer_hands_on_audio_at_the_next_packet() -> None:
    """aiortc holds 4 packets of inbound audio (80 ms) before releasing one; the listener's
    track is tightened to hold the next packet only."""
    from aiortc import RTCPeerConnection

    sender, receiver = RTCPeerConnection(), RTCPeerConnection()
    sender.addTrack(WavMicrophone(np.concatenate([clip("account_balance"), silence(5.0)])))
    tracks: list[MediaStreamTrack] = []
    tightened: list[bool] = []

    @receiver.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        tracks.append(track)
        tightened.append(tighten_receive_buffer(receiver, track))

    try:
        await sender.setLocalDescription(await sender.createOffer())
        await receiver.setRemoteDescription(sender.localDescription)
        await receiver.setLocalDescription(await receiver.createAnswer())
        await sender.setRemoteDescription(receiver.localDescription)
        assert tightened == [True]
        (track,) = tracks
        held = []
        buffer = receiver.getTransceivers()[0].receiver._RTCRtpReceiver__jitter_buffer  # type: ignore[attr-defined]
        for _ in range(25):  # half a second of audio
            await asyncio.wait_for(track.recv(), 10.0)
            held.append(sum(packet is not None for packet in buffer._packets))
        assert buffer._prefetch == 1 and max(held) <= 2, held
        # A track the connection does not receive is left alone.
        assert not tighten_receive_buffer(sender, track)
    finally:
        await sender.close()
        await receiver.close()


async def test_a_question_over_webrtc_is_transcribed_and_answered(
    client: TestClient, auth: dict[str, str]
) -> None:
    customer = RtcCustomer()
    customer.pc.addTrack(WavMicrophone(np.concatenate([silence(1.0), clip("activate_card"), silence(30.0)])))
    resp = await client.post("/api/offer", json=await customer.offer())
    assert resp.status == 200, await resp.text()
    answer = await resp.json()
    await customer.accept(answer)
    session_id = answer["session_id"]
    try:
        final = await customer.wait_for_event(
            lambda e: e["type"] == "transcript" and e["speaker"] == "customer" and e["final"], within=30
        )
        assert words(final["text"]) == ["how", "do", "i", "activate", "my", "new", "card"]
        # The echo driver says the question back: a caption, then sound on the audio track.
        caption = await customer.wait_for_event(lambda e: e["type"] == "caption", within=30)
        assert "activate" in caption["text"].lower()
        await customer.wait_for_event(
            lambda e: e["type"] == "transcript" and e["speaker"] == "avatar", within=30
        )
        assert max(customer.got.audio_rms) > 300
        resp = await client.get(f"/api/sessions/{session_id}/transcript", headers=auth)
        assert resp.status == 200
        body = await resp.json()
        lines = [(e["speaker"], e["interrupted"]) for e in body["transcript"]]
        assert lines == [("customer", False), ("ai", False)]
        assert all(isinstance(e["at"], float) and math.isfinite(e["at"]) for e in body["transcript"])
        assert (await client.get(f"/api/sessions/{session_id}/transcript")).status == 401
        assert (await client.get("/api/sessions/nope/transcript", headers=auth)).status == 404
    finally:
        await customer.close()
