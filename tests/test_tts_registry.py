"""TTSRegistry (engines, voices, offline fallback) and speak_stream (sentence streaming)."""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
import threading
from contextlib import aclosing
from typing import Any

import numpy as np
import pytest

from avatar.config import Settings, VoiceChoice
from avatar.speech.sentences import split_sentences
from avatar.speech.tts.base import TTSError, Voice
from avatar.speech.tts.registry import TTSRegistry
from avatar.speech.tts.silence import voiced_span
from avatar.speech.tts.stream import speak_stream
from avatar.timeline import SpeechChunk
from tests.fakes import assert_speech_chunk
from tests.fakes.edge_server import FakeEdgeServer

ESPEAK_EN = Voice("espeak", "en-us", "en")


def settings_with(edge_url: str | None = None, timeout: float = 1.0) -> Settings:
    voices = {
        "*:en": VoiceChoice("piper", "en_US-joe-medium"),
        "*:zh": VoiceChoice("espeak", "cmn"),
        "anna:en": VoiceChoice("edge", "en-US-AriaNeural"),
        "anna:zh": VoiceChoice("edge", None),
    }
    return Settings(voices=voices, edge_tts_url=edge_url, tts_fallback_timeout=timeout)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def offline_registry() -> TTSRegistry:
    return TTSRegistry(settings_with())  # piper loads once for the module


# --- registry ---------------------------------------------------------------------------


def test_voice_for_uses_the_avatar_then_the_wildcard() -> None:
    registry = TTSRegistry(settings_with())
    assert registry.voice_for("anna", "en") == Voice("edge", "en-US-AriaNeural", "en")
    assert registry.voice_for("anna", "zh") == Voice("edge", None, "zh")
    assert registry.voice_for("bob", "en") == Voice("piper", "en_US-joe-medium", "en")
    assert registry.voice_for("bob", "zh") == Voice("espeak", "cmn", "zh")


def test_engines_are_created_once_and_shared() -> None:
    registry = TTSRegistry(settings_with())
    assert registry.engine("espeak") is registry.engine("espeak")
    assert registry.engine("edge").name == "edge"


def test_unknown_engine_names_the_known_ones() -> None:
    with pytest.raises(TTSError, match="piper, espeak, edge"):
        TTSRegistry(settings_with()).engine("polly")


async def test_empty_sentence_is_refused(offline_registry: TTSRegistry) -> None:
    with pytest.raises(ValueError, match="empty"):
        await offline_registry.synthesize("  ", ESPEAK_EN)


async def test_offline_voices_speak_both_languages(offline_registry: TTSRegistry) -> None:
    english = await offline_registry.synthesize(
        "How can I help you?", offline_registry.voice_for("bob", "en")
    )
    mandarin = await offline_registry.synthesize(
        "请问有什么可以帮您？", offline_registry.voice_for("bob", "zh")
    )
    assert (english.engine, mandarin.engine) == ("piper", "espeak")
    assert_speech_chunk(english)
    assert_speech_chunk(mandarin)


async def test_edge_through_the_registry_uses_the_configured_endpoint() -> None:
    async with FakeEdgeServer() as fake:
        registry = TTSRegistry(settings_with(fake.url))
        chunk = await registry.synthesize("Good afternoon.", registry.voice_for("anna", "en"))
    assert chunk.engine == "edge"
    assert "AriaNeural" in fake.renditions[0].voice


@pytest.mark.parametrize(
    ("lang", "text", "offline"), [("en", "Good afternoon.", "piper"), ("zh", "下午好。", "espeak")]
)
async def test_failing_edge_falls_back_to_the_offline_engine(
    lang: str, text: str, offline: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with FakeEdgeServer("reject") as fake:
        registry = TTSRegistry(settings_with(fake.url))
        with caplog.at_level(logging.WARNING, logger="avatar.speech.tts.registry"):
            chunk = await registry.synthesize(text, registry.voice_for("anna", lang))
    assert fake.requests == 1
    assert chunk.engine == offline and chunk.lang == lang and chunk.text == text
    assert_speech_chunk(chunk)
    assert any("edge failed" in r.getMessage() and offline in r.getMessage() for r in caplog.records)


async def test_hanging_edge_falls_back_after_the_timeout(caplog: pytest.LogCaptureFixture) -> None:
    async with FakeEdgeServer("hang") as fake:
        registry = TTSRegistry(settings_with(fake.url, timeout=0.3))
        with caplog.at_level(logging.WARNING, logger="avatar.speech.tts.registry"):
            chunk = await registry.synthesize("下午好。", registry.voice_for("anna", "zh"))
    assert chunk.engine == "espeak"
    assert any("longer than 0.3 s" in r.getMessage() for r in caplog.records)


async def test_unreachable_edge_falls_back() -> None:
    registry = TTSRegistry(settings_with(f"ws://127.0.0.1:{free_port()}/edge/v1"))
    chunk = await registry.synthesize("下午好。", registry.voice_for("anna", "zh"))
    assert chunk.engine == "espeak"
    assert_speech_chunk(chunk)


async def test_a_broken_offline_engine_falls_back_to_espeak(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "piper", None)  # piper-tts "not installed"
    registry = TTSRegistry(settings_with())
    chunk = await registry.synthesize("Good afternoon.", registry.voice_for("bob", "en"))
    assert chunk.engine == "espeak" and chunk.lang == "en"


async def test_missing_edge_package_is_named_in_the_fallback_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "edge_tts", None)
    registry = TTSRegistry(settings_with())
    with caplog.at_level(logging.WARNING, logger="avatar.speech.tts.registry"):
        chunk = await registry.synthesize("下午好。", registry.voice_for("anna", "zh"))
    assert chunk.engine == "espeak"
    assert any("pip install edge-tts" in r.getMessage() for r in caplog.records)


# --- speak_stream -----------------------------------------------------------------------


class RecordingRegistry(TTSRegistry):
    """The real registry (espeak), noting when each sentence's synthesis starts and ends."""

    def __init__(self, hold: str | None = None, fail: str | None = None) -> None:
        super().__init__(settings_with())
        self.started: list[str] = []
        self.finished: list[str] = []
        self.cancelled: list[str] = []
        self.started_event = asyncio.Event()
        self.finished_event = asyncio.Event()
        self._hold = hold  # a sentence whose synthesis never finishes
        self._fail = fail  # a sentence no engine can speak

    async def synthesize(self, sentence: str, voice: Voice) -> SpeechChunk:
        self.started.append(sentence)
        self.started_event.set()
        try:
            if sentence == self._hold:
                await asyncio.Event().wait()
            if sentence == self._fail:
                raise TTSError("no TTS engine could speak")
            chunk = await super().synthesize(sentence, voice)
        except asyncio.CancelledError:
            self.cancelled.append(sentence)
            raise
        self.finished.append(sentence)
        self.finished_event.set()
        return chunk

    async def wait_started(self, count: int) -> None:
        while len(self.started) < count:
            self.started_event.clear()
            await self.started_event.wait()

    async def wait_finished(self, count: int) -> None:
        while len(self.finished) < count:
            self.finished_event.clear()
            await self.finished_event.wait()


TEXT = "Welcome to the bank. Your balance is $1,000.00. Anything else? Goodbye."


async def test_stream_yields_every_sentence_in_order() -> None:
    registry = RecordingRegistry()
    async with aclosing(speak_stream(registry, TEXT, ESPEAK_EN)) as stream:
        chunks = [chunk async for chunk in stream]
    assert [c.text for c in chunks] == split_sentences(TEXT)
    for chunk in chunks:
        assert_speech_chunk(chunk)
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []


async def test_stream_mandarin_in_order() -> None:
    text = "你好，欢迎来到我们银行。请问有什么可以帮您？"
    registry = RecordingRegistry()
    async with aclosing(speak_stream(registry, text, Voice("espeak", "cmn", "zh"))) as stream:
        texts = [chunk.text async for chunk in stream]
    assert texts == ["你好，欢迎来到我们银行。", "请问有什么可以帮您？"]


async def test_next_sentence_is_synthesised_while_the_consumer_holds_the_current_one() -> None:
    registry = RecordingRegistry()
    async with aclosing(speak_stream(registry, TEXT, ESPEAK_EN, lookahead=1)) as stream:
        first = await anext(stream)
        assert first.text == "Welcome to the bank."
        # While the consumer holds the first chunk, the next sentences get synthesised...
        await registry.wait_finished(3)
        # ...but no further than the bound: one chunk waiting in the queue, one more done and
        # waiting for room; the fourth sentence does not start.
        for _ in range(20):
            await asyncio.sleep(0)
        assert registry.started == split_sentences(TEXT)[:3]
        rest = [chunk.text async for chunk in stream]
    assert rest == split_sentences(TEXT)[1:]


async def test_cancelling_the_consumer_cancels_pending_synthesis() -> None:
    registry = RecordingRegistry(hold="Your balance is $1,000.00.")
    received: list[str] = []

    async def consume() -> None:
        async for chunk in speak_stream(registry, TEXT, ESPEAK_EN):
            received.append(chunk.text)

    consumer = asyncio.create_task(consume())
    await registry.wait_started(2)
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer
    assert received == ["Welcome to the bank."]
    assert registry.cancelled == ["Your balance is $1,000.00."]
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []


async def test_leaving_the_stream_early_stops_the_producer() -> None:
    registry = RecordingRegistry(hold="Anything else?")
    async with aclosing(speak_stream(registry, TEXT, ESPEAK_EN)) as stream:
        async for _chunk in stream:
            break
    assert "Goodbye." not in registry.started
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []


async def test_a_sentence_nobody_can_speak_raises_after_the_ones_before_it() -> None:
    registry = RecordingRegistry(fail="Anything else?")
    received: list[str] = []
    with pytest.raises(TTSError):
        async with aclosing(speak_stream(registry, TEXT, ESPEAK_EN)) as stream:
            async for chunk in stream:
                received.append(chunk.text)
    assert received == ["Welcome to the bank.", "Your balance is $1,000.00."]


async def test_without_voice_for_one_voice_speaks_a_mixed_line() -> None:
    registry = RecordingRegistry()
    text = "Hello, I'm Maria. 您好，我是玛丽亚。"
    async with aclosing(speak_stream(registry, text, ESPEAK_EN, first_max_units=0)) as stream:
        chunks = [chunk async for chunk in stream]
    assert registry.started == ["Hello, I'm Maria.", "您好，我是玛丽亚。"]
    assert [(c.engine, c.lang) for c in chunks] == [("espeak", "en"), ("espeak", "en")]


async def test_a_part_nobody_can_speak_raises_after_the_sentences_before_it() -> None:
    registry = RecordingRegistry(fail="I'm Maria，")
    voices = {"en": ESPEAK_EN, "zh": Voice("espeak", "cmn", "zh")}
    text = "Welcome. 您好，I'm Maria，请问有什么可以帮您？"
    received: list[str] = []
    with pytest.raises(TTSError):
        stream = speak_stream(registry, text, ESPEAK_EN, voice_for=voices.__getitem__, first_max_units=0)
        async with aclosing(stream):
            async for chunk in stream:
                received.append(chunk.text)
    assert received == ["Welcome."]
    assert registry.started == ["Welcome.", "您好，", "I'm Maria，"]  # nothing after the failed part


async def test_empty_text_yields_nothing() -> None:
    async with aclosing(speak_stream(RecordingRegistry(), " \n ", ESPEAK_EN)) as stream:
        assert [chunk async for chunk in stream] == []


async def test_lookahead_must_be_positive() -> None:
    with pytest.raises(ValueError, match="lookahead"):
        await anext(speak_stream(RecordingRegistry(), "Hi.", ESPEAK_EN, lookahead=0))


# --- the synthesis cache and the TTS pool -------------------------------------------------------


async def test_one_line_for_many_sessions_is_synthesised_once() -> None:
    registry = TTSRegistry(settings_with())
    chunks = await asyncio.gather(*(registry.synthesize("Your card is blocked.", ESPEAK_EN) for _ in range(10)))
    assert registry.syntheses == 1 and registry.cache_hits == 9
    assert all(c is chunks[0] for c in chunks)  # in flight: the ten callers share one synthesis
    again = await registry.synthesize("Your card is blocked.", ESPEAK_EN)
    assert again is chunks[0] and registry.syntheses == 1  # finished: from the cache
    assert not again.audio.flags.writeable  # shared by every session: nobody may change it
    other_voice = await registry.synthesize("Your card is blocked.", Voice("espeak", "en", "en"))
    assert other_voice is not again and registry.syntheses == 2
    registry.close()


async def test_the_cache_keeps_the_most_recently_used_sentences() -> None:
    registry = TTSRegistry(settings_with(), cache_size=2)
    for sentence in ("One.", "Two.", "One.", "Three."):  # "Two." is the least recently used
        await registry.synthesize(sentence, ESPEAK_EN)
    assert registry.syntheses == 3
    await registry.synthesize("One.", ESPEAK_EN)
    assert registry.syntheses == 3
    await registry.synthesize("Two.", ESPEAK_EN)
    assert registry.syntheses == 4
    registry.clear_cache()
    await registry.synthesize("One.", ESPEAK_EN)
    assert registry.syntheses == 5
    uncached = TTSRegistry(settings_with(), cache_size=0)
    await uncached.synthesize("One.", ESPEAK_EN)
    await uncached.synthesize("One.", ESPEAK_EN)
    assert uncached.syntheses == 2


async def test_a_caller_that_is_interrupted_does_not_cancel_the_others() -> None:
    registry = TTSRegistry(settings_with())
    cut = asyncio.create_task(registry.synthesize("Please hold the line.", ESPEAK_EN))
    kept = asyncio.create_task(registry.synthesize("Please hold the line.", ESPEAK_EN))
    await asyncio.sleep(0)  # both wait for the one synthesis
    cut.cancel()
    chunk = await kept
    assert_speech_chunk(chunk)
    assert cut.cancelled() or cut.result() is chunk
    assert registry.syntheses == 1


async def test_when_every_caller_gives_up_the_synthesis_stops_and_no_task_is_left() -> None:
    registry = TTSRegistry(settings_with())
    caller = asyncio.create_task(registry.synthesize("Please hold the line.", ESPEAK_EN))
    await asyncio.sleep(0)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []
    chunk = await registry.synthesize("Please hold the line.", ESPEAK_EN)  # asked again: spoken
    assert_speech_chunk(chunk)


async def test_a_fallback_is_not_cached_for_the_voice_it_stood_in_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "edge_tts", None)  # the chosen engine fails every time
    registry = TTSRegistry(settings_with())
    voice = registry.voice_for("anna", "zh")
    first = await registry.synthesize("下午好。", voice)
    second = await registry.synthesize("下午好。", voice)
    assert first.engine == second.engine == "espeak"
    assert registry.syntheses == 2  # the edge voice is tried again (it may be back)


async def test_synthesis_runs_on_the_tts_pool(offline_registry: TTSRegistry) -> None:
    threads: list[str] = []
    for name, voice in (("piper", offline_registry.voice_for("bob", "en")), ("espeak", ESPEAK_EN)):
        engine = offline_registry.engine(name)
        blocking = engine.synthesize_blocking  # type: ignore[attr-defined]

        def spy(sentence: str, v: Voice, blocking: Any = blocking) -> SpeechChunk:
            threads.append(threading.current_thread().name)
            return blocking(sentence, v)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(engine, "synthesize_blocking", spy)
            await engine.synthesize("Pool test.", voice)
    assert len(threads) == 2 and all(name.startswith("tts") for name in threads)


# --- silence around the pieces of a reply ---------------------------------------------------------


async def test_the_reply_starts_with_its_voice_and_a_cut_sentence_joins_without_a_long_pause(
    offline_registry: TTSRegistry,
) -> None:
    voice = offline_registry.voice_for("bob", "en")
    text = "Please wait and stay on the line for a moment. Thank you for your patience."
    pieces = split_sentences(text, first_max_units=8)
    assert pieces[0] == "Please wait"  # cut between two words
    async with aclosing(speak_stream(offline_registry, text, voice, first_max_units=8)) as stream:
        chunks = [chunk async for chunk in stream]
    assert [c.text for c in chunks] == pieces
    whole = [await offline_registry.synthesize(p, voice) for p in pieces]  # as the engine made them
    rate = chunks[0].sample_rate

    def lead(chunk: SpeechChunk) -> float:
        return (voiced_span(chunk.audio) or (0, 0))[0] / rate

    def tail(chunk: SpeechChunk) -> float:
        return (len(chunk.audio) - (voiced_span(chunk.audio) or (0, 0))[1]) / rate

    # Piper's voice varies a little from one synthesis to the next (its model samples noise), so
    # each trimmed piece is compared with the very synthesis it was cut from (the cache has it).
    assert lead(chunks[0]) <= min(0.011, lead(whole[0]))  # the reply starts with its voice
    assert tail(chunks[0]) <= min(0.051, tail(whole[0]))  # a breath, not a sentence's end, at the cut
    assert lead(chunks[1]) <= min(0.011, lead(whole[1]))  # the cut sentence goes on at once
    cut = round((lead(whole[0]) - lead(chunks[0])) * rate)  # the samples trimmed off the front
    assert np.array_equal(chunks[0].audio, whole[0].audio[cut : cut + len(chunks[0].audio)])
    assert np.array_equal(chunks[2].audio, whole[2].audio)  # whole sentences keep their own pauses
    for chunk in chunks:
        assert_speech_chunk(chunk)


async def test_a_line_break_is_a_sentence_end_not_a_cut(offline_registry: TTSRegistry) -> None:
    voice = offline_registry.voice_for("bob", "en")
    text = "Your card is ready\nIt arrives on Monday"  # no punctuation: two sentences all the same
    async with aclosing(speak_stream(offline_registry, text, voice)) as stream:
        chunks = [chunk async for chunk in stream]
    whole = [await offline_registry.synthesize(c.text, voice) for c in chunks]  # the cache has them
    assert [c.text for c in chunks] == ["Your card is ready", "It arrives on Monday"]
    assert np.array_equal(chunks[0].audio[-100:], whole[0].audio[-100:])  # its closing pause kept
    assert len(chunks[0].audio) <= len(whole[0].audio)  # at most its lead-in went
    assert chunks[1] is whole[1]  # the next sentence as the voice made it
