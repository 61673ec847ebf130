"""The edge engine against a local fake of the edge TTS service (tests/fakes/edge_server.py)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import numpy as np
import pytest

from avatar.speech.tts.base import TTSError, Voice
from avatar.speech.tts.edge import EDGE_SAMPLE_RATE, EdgeTTS, WordBoundary, words_from_boundaries
from avatar.timeline import SILENCE
from tests.fakes import assert_speech_chunk
from tests.fakes.edge_server import FakeEdgeServer, Mode


@pytest.fixture
async def server() -> AsyncIterator[FakeEdgeServer]:
    async with FakeEdgeServer() as fake:
        yield fake


async def test_english_words_audio_and_phonemes(server: FakeEdgeServer) -> None:
    chunk = await EdgeTTS(server.url).synthesize(
        "Hello world, your balance is $1,000.00.", Voice("edge", None, "en")
    )
    assert_speech_chunk(chunk)
    assert chunk.sample_rate == EDGE_SAMPLE_RATE and chunk.engine == "edge" and chunk.lang == "en"
    [rendition] = server.renditions
    assert "EmmaMultilingualNeural" in rendition.voice
    # Word times are the service's, converted from 100 ns ticks.
    assert [w.text for w in chunk.words] == [w.text for w in rendition.words]
    for got, sent in zip(chunk.words, rendition.words, strict=True):
        assert got.start == pytest.approx(sent.start, abs=1e-6)
        assert got.end == pytest.approx(sent.end, abs=1e-6)
    # The MP3 decodes to the whole rendition (plus the codec's few ms of delay and padding).
    assert rendition.duration <= chunk.duration < rendition.duration + 0.1
    # Each word's phonemes lie inside the word; between words there is silence.
    hello = chunk.words[0]
    inside = [p.symbol for p in chunk.phonemes if hello.start <= p.start < hello.end]
    assert inside == ["h", "ə", "l", "oʊ"]
    assert chunk.phonemes[0].symbol == SILENCE and chunk.phonemes[0].end == pytest.approx(hello.start)


async def test_mandarin_words_get_mandarin_phonemes(server: FakeEdgeServer) -> None:
    chunk = await EdgeTTS(server.url).synthesize("你好，欢迎。", Voice("edge", None, "zh"))
    assert_speech_chunk(chunk)
    assert "XiaoxiaoNeural" in server.renditions[0].voice
    assert [w.text for w in chunk.words] == ["你", "好", "欢", "迎"]
    spoken = [p.symbol for p in chunk.phonemes if p.symbol != SILENCE]
    assert spoken == ["n", "i", "χ", "ɑu", "χ", "ua", "n", "j", "i", "ŋ"]


async def test_named_voice_reaches_the_service(server: FakeEdgeServer) -> None:
    await EdgeTTS(server.url).synthesize("Hi there.", Voice("edge", "en-GB-SoniaNeural", "en"))
    assert "en-GB, SoniaNeural" in server.renditions[0].voice


@pytest.mark.parametrize("mode", ["reject", "no_audio"])
async def test_service_failures_raise_tts_error(mode: Mode) -> None:
    async with FakeEdgeServer(mode) as fake:
        with pytest.raises(TTSError, match="edge"):
            await EdgeTTS(fake.url).synthesize("Hello.", Voice("edge"))
        assert fake.requests == 1


async def test_audio_is_decoded_not_just_received(server: FakeEdgeServer) -> None:
    chunk = await EdgeTTS(server.url).synthesize("One two.", Voice("edge"))
    first = chunk.words[0]
    # The fake's tone burst for "One" holds the energy; the lead-in before it is silent.
    codec_delay = 0.06
    lead = chunk.audio[: int(first.start * EDGE_SAMPLE_RATE)].astype(np.float64)
    word = chunk.audio[
        int((first.start + codec_delay) * EDGE_SAMPLE_RATE) : int(first.end * EDGE_SAMPLE_RATE)
    ]
    assert np.sqrt(np.mean(word.astype(np.float64) ** 2)) > 10 * (np.sqrt(np.mean(lead**2)) + 1)


async def test_missing_edge_tts_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "edge_tts", None)
    with pytest.raises(TTSError, match="pip install edge-tts"):
        await EdgeTTS("ws://127.0.0.1:9/").synthesize("Hello.", Voice("edge"))


def test_word_boundaries_are_ordered_and_clipped_to_the_audio() -> None:
    boundaries = [
        WordBoundary("world", 6_000_000, 4_000_000),
        WordBoundary("Hello", 1_000_000, 6_000_000),  # overlaps "world", which then starts where "Hello" ends
        WordBoundary("late", 12_000_000, 5_000_000),  # runs past the audio's end
    ]
    words = words_from_boundaries(boundaries, duration=1.5)
    assert [(w.text, w.start, w.end) for w in words] == [
        ("Hello", 0.1, 0.7),
        ("world", 0.7, 1.0),
        ("late", 1.2, 1.5),
    ]


async def test_concurrent_engines_each_reach_their_own_endpoint() -> None:
    # The endpoint override is applied per request; two engines pointed at different
    # services, speaking at the same time, must not swap endpoints.
    async with FakeEdgeServer() as good, FakeEdgeServer("reject") as bad:
        results = await asyncio.gather(
            *(EdgeTTS(url).synthesize("Hello there.", Voice("edge")) for url in (good.url, bad.url) * 3),
            return_exceptions=True,
        )
    assert [type(r).__name__ for r in results] == ["SpeechChunk", "TTSError"] * 3
    assert (good.requests, bad.requests) == (3, 3)
