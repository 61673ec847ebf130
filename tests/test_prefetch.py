"""Warming the answer's first TTS piece while the end of the customer's turn is confirmed: the
real piper and espeak engines through the real TTS registry; at listener level on a
``FakeClock`` (the rig of ``tests/test_listener.py``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import aclosing
from types import SimpleNamespace

import numpy as np
import pytest

from avatar.config import Settings, VoiceChoice
from avatar.drivers import BrainDriver
from avatar.server.engines import Engines
from avatar.session import EchoDriver, TTSSpeechSource
from avatar.speech.sentences import split_sentences
from avatar.speech.tts.base import Voice
from avatar.speech.tts.registry import TTSRegistry
from avatar.speech.tts.stream import speak_stream, warm_first_piece
from avatar.speech.vad import VoiceActivityDetector
from avatar.timeline import SpeechChunk
from tests.test_listener import CountingBrain, Speculating, clip, make_rig, silence

PIPER = Voice("piper", "en_US-joe-medium", "en")
CMN = Voice("espeak", "cmn", "zh")
VOICES = {"en": PIPER, "zh": CMN}
# Long enough that speak_stream cuts a short first piece off the first sentence.
REPLY = "To activate your new card, open the app and choose activate card from the cards menu. It takes a minute."


class WatchedRegistry(TTSRegistry):
    """The real registry, noting each sentence asked for: (asking task's name, clock time, text)."""

    def __init__(self) -> None:
        voices = {"*:en": VoiceChoice("piper", "en_US-joe-medium"), "*:zh": VoiceChoice("espeak", "cmn")}
        super().__init__(Settings(voices=voices))
        self.now: Callable[[], float] = lambda: 0.0
        self.asked: list[tuple[str, float, str]] = []

    async def synthesize(self, sentence: str, voice: Voice) -> SpeechChunk:
        task = asyncio.current_task()
        self.asked.append((task.get_name() if task else "", self.now(), sentence))
        return await super().synthesize(sentence, voice)


@pytest.fixture(scope="module")
def registry() -> WatchedRegistry:
    return WatchedRegistry()  # piper loads once for the module


@pytest.fixture(scope="module")
def vad(engines: Engines) -> VoiceActivityDetector:
    return engines.vad()


async def speak(registry: TTSRegistry, text: str) -> list[SpeechChunk]:
    async with aclosing(speak_stream(registry, text, PIPER, voice_for=VOICES.__getitem__)) as stream:
        return [chunk async for chunk in stream]


async def test_a_warmed_first_piece_is_not_synthesised_again(registry: WatchedRegistry) -> None:
    registry.clear_cache()
    pieces = split_sentences(REPLY)
    assert len(pieces) == 3 and len(pieces[0]) < len(REPLY.split(".")[0])  # the first sentence was cut
    before = registry.syntheses
    await warm_first_piece(registry, REPLY, PIPER, voice_for=VOICES.__getitem__)
    assert registry.syntheses == before + 1  # the first piece only
    hits = registry.cache_hits
    chunks = await speak(registry, REPLY)
    assert [c.text for c in chunks] == pieces
    assert registry.syntheses == before + len(pieces)  # the warmed piece came from the cache
    assert registry.cache_hits == hits + 1


async def test_speaking_joins_a_warm_up_still_in_flight(registry: WatchedRegistry) -> None:
    registry.clear_cache()
    text = "您好，I'm Maria from the bank，请问有什么可以帮您？"  # a mixed first piece: two parts
    before = registry.syntheses
    warming = asyncio.create_task(warm_first_piece(registry, text, PIPER, voice_for=VOICES.__getitem__))
    await asyncio.sleep(0)  # the warm-up has asked for its first part
    chunks = await speak(registry, text)
    await warming
    assert [c.text for c in chunks] == ["您好，I'm Maria", "from the bank，请问有什么可以帮您？"]
    # Each part of each piece synthesised once: the speaker joined or reused the warm-up's.
    parts = ["您好，", "I'm Maria", "from the bank，", "请问有什么可以帮您？"]
    assert registry.syntheses - before == len(parts)


async def test_a_withdrawn_warm_up_costs_at_most_its_first_piece(registry: WatchedRegistry) -> None:
    registry.clear_cache()
    before = registry.syntheses
    warming = asyncio.create_task(warm_first_piece(registry, REPLY, PIPER))
    await asyncio.sleep(0)
    warming.cancel()
    await asyncio.wait({warming})
    await asyncio.sleep(0.05)  # let the registry's cancelled synthesis unwind
    assert registry.syntheses - before <= 1
    assert not registry._in_flight  # nothing left synthesising for nobody


@pytest.mark.parametrize("driver_name", ["echo", "brain"])
async def test_the_answers_first_piece_is_synthesised_while_the_turn_is_confirmed(
    vad: VoiceActivityDetector, registry: WatchedRegistry, driver_name: str
) -> None:
    """The speculative transcript reads finished: the first piece of the planned answer (the
    echo: the words themselves; the brain: its decided reply) is synthesised by a warm-up task,
    nothing is said before the turn is decided, and saying the answer synthesises no piece twice."""
    registry.clear_cache()
    question = "How do I activate my new card?"
    source = TTSSpeechSource(registry, "maria", "en")
    rig = make_rig(vad, Speculating(question), source=source)
    registry.now = rig.session.stage.clock.time
    registry.asked.clear()
    brain = CountingBrain()
    rig.session.driver = (
        EchoDriver() if driver_name == "echo" else BrainDriver(SimpleNamespace(brain=brain, brain_loading=None))
    )
    answer = question if driver_name == "echo" else f"About: {question}"
    said: list[float] = []  # clock time of each line the speaker starts
    stream = source.stream

    def watched(text: str, lang: str | None) -> object:
        said.append(rig.session.stage.clock.time())
        return stream(text, lang)

    source.stream = watched  # type: ignore[method-assign,assignment]
    before = registry.syntheses
    try:
        await rig.play(np.concatenate([silence(0.3), clip("activate_card"), silence(1.5)]))
        (turn,) = rig.turns
        assert turn.how == "early" and turn.outcome == "answered"
        assert len(said) == 1 and said[0] >= turn.decided_at  # nothing said before the turn was over
        warm = [(at, text) for name, at, text in registry.asked if name.startswith("tts-warm")]
        assert [text for _, text in warm] == [split_sentences(answer)[0]]
        if driver_name == "echo":  # (the brain decides in a thread: its warm-up may start later)
            assert warm[0][0] < turn.decided_at
        spoken = [text for name, _, text in registry.asked if not name.startswith("tts-warm")]
        assert spoken[0] == warm[0][1]  # the speaker asked for the warmed piece ...
        # ... and no piece was synthesised twice: it was reused or joined, not redone.
        assert registry.syntheses - before == len(set(spoken))
    finally:
        await rig.close()
