"""Piper with the packaged en_US-joe-medium voice: neural audio, aligned phonemes, words."""

from __future__ import annotations

import os
import sys

import pytest

from avatar.speech.tts.base import TTSError, Voice
from avatar.speech.tts.piper import PiperTTS, group_codepoints
from avatar.timeline import SILENCE
from tests.fakes import assert_speech_chunk

JOE = Voice("piper", "en_US-joe-medium", "en")


@pytest.fixture(scope="module")
def engine() -> PiperTTS:
    return PiperTTS()  # one model load for the module


async def test_sentence_has_exact_phoneme_timeline_and_words(engine: PiperTTS) -> None:
    chunk = await engine.synthesize("Hello, your account balance is $1,000.00 today.", JOE)
    assert_speech_chunk(chunk)
    assert chunk.sample_rate == 22050 and chunk.engine == "piper" and chunk.lang == "en"
    assert [w.text for w in chunk.words] == [
        "Hello",
        "your",
        "account",
        "balance",
        "is",
        "$1,000.00",
        "today",
    ]
    spoken = [p.symbol for p in chunk.phonemes if p.symbol != SILENCE]
    assert spoken[:4] == ["h", "ə", "l", "oʊ"]  # code points joined back into espeak's phonemes
    # The comma is a real pause: a silence between "Hello" and "your".
    gap = [
        p
        for p in chunk.phonemes
        if p.symbol == SILENCE and chunk.words[0].end <= p.start < chunk.words[1].start
    ]
    assert gap
    durations = {w.text: w.end - w.start for w in chunk.words}
    assert durations["$1,000.00"] > durations["balance"] > durations["is"]


async def test_several_espeak_sentences_in_one_call_become_one_chunk(engine: PiperTTS) -> None:
    # espeak splits this into two sentences (piper synthesises each); one chunk comes back.
    chunk = await engine.synthesize("Yes. Your card is active.", JOE)
    assert_speech_chunk(chunk)
    assert [w.text for w in chunk.words] == ["Yes", "Your", "card", "is", "active"]


async def test_a_single_short_word(engine: PiperTTS) -> None:
    chunk = await engine.synthesize("Hi.", JOE)
    assert_speech_chunk(chunk)
    assert [w.text for w in chunk.words] == ["Hi"]
    assert [p.symbol for p in chunk.phonemes if p.symbol != SILENCE] == ["h", "aɪ"]


async def test_default_voice_is_joe(engine: PiperTTS) -> None:
    chunk = await engine.synthesize("Welcome.", Voice("piper", None, "en"))
    assert_speech_chunk(chunk)


async def test_mandarin_is_refused_with_a_clear_error(engine: PiperTTS) -> None:
    with pytest.raises(TTSError, match="English only"):
        await engine.synthesize("你好。", Voice("piper", None, "zh"))


async def test_unknown_voice_names_the_choices(engine: PiperTTS) -> None:
    with pytest.raises(TTSError, match="en_US-joe-medium"):
        await engine.synthesize("Hello.", Voice("piper", "en_GB-nobody-low", "en"))


async def test_missing_piper_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "piper", None)  # makes `import piper` fail
    with pytest.raises(TTSError, match="pip install piper-tts"):
        await PiperTTS().synthesize("Hello.", JOE)


def test_code_points_join_into_espeak_phonemes() -> None:
    pairs = [("^", 10), ("h", 5), ("ə", 5), ("l", 5), ("ˈ", 3), ("o", 4), ("ʊ", 4), (" ", 2),
             ("w", 5), ("ˈ", 2), ("ɜ", 6), ("ː", 4), ("l", 5), ("d", 5), (".", 7), ("$", 1)]  # fmt: skip
    units = group_codepoints(pairs)
    assert [(u.symbol, u.samples) for u in units] == [
        (SILENCE, 10), ("h", 5), ("ə", 5), ("l", 5), ("oʊ", 11), (" ", 2),
        ("w", 5), ("ɜː", 12), ("l", 5), ("d", 5), (SILENCE, 7), (SILENCE, 1),
    ]  # fmt: skip
    assert sum(u.samples for u in units) == sum(n for _, n in pairs)


def test_the_voice_runs_on_two_onnxruntime_threads_without_spinning(engine: PiperTTS) -> None:
    options = engine.load(JOE).session.get_session_options()
    assert options.intra_op_num_threads == min(2, os.cpu_count() or 1)
    assert options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
