"""espeak-ng through its C API: English and Mandarin audio with phoneme and word timelines."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest

from avatar.speech.tts.base import TTSError, Voice
from avatar.speech.tts.espeak import ESPEAK_SAMPLE_RATE, EspeakLibrary, EspeakTTS
from avatar.timeline import SILENCE
from tests.fakes import assert_speech_chunk

ENGLISH = Voice("espeak", None, "en")
MANDARIN = Voice("espeak", "cmn", "zh")


@pytest.fixture(scope="module")
def engine() -> EspeakTTS:
    return EspeakTTS()


async def test_english_sentence_has_exact_timelines(engine: EspeakTTS) -> None:
    chunk = await engine.synthesize("Hello world, your balance is $1,000.00 in the bank.", ENGLISH)
    assert_speech_chunk(chunk)
    assert chunk.sample_rate == ESPEAK_SAMPLE_RATE
    assert chunk.engine == "espeak" and chunk.lang == "en"
    assert [w.text for w in chunk.words] == [
        "Hello",
        "world",
        "your",
        "balance",
        "is",
        "$1,000.00",
        "in",
        "the",
        "bank",
    ]
    spoken = [p.symbol for p in chunk.phonemes if p.symbol != SILENCE]
    assert spoken[:4] == ["h", "ə", "l", "oʊ"]
    # The amount is read out ("one thousand dollars"), so it lasts longer than any plain word.
    durations = {w.text: w.end - w.start for w in chunk.words}
    assert durations["$1,000.00"] > durations["balance"] > durations["is"]


async def test_mandarin_greeting(engine: EspeakTTS) -> None:
    chunk = await engine.synthesize("你好，欢迎来到我们银行", MANDARIN)
    assert_speech_chunk(chunk)
    assert chunk.lang == "zh"
    # espeak reads dictionary words: 你好, 欢迎, 银行 come as one word each.
    assert [w.text for w in chunk.words] == ["你好", "欢迎", "来", "到", "我", "们", "银行"]
    spoken = [p.symbol for p in chunk.phonemes if p.symbol != SILENCE]
    assert spoken == ["n", "i", "χ", "ɑu", "χ", "ua", "n", "j", "i", "ŋ", "l", "ai", "t", "ɑu",
                      "w", "o", "m", "ə", "n", "j", "i", "n", "χ", "ɑ", "ŋ"]  # fmt: skip
    # The comma is heard as a pause between 你好 and 欢迎.
    pause = [
        p
        for p in chunk.phonemes
        if p.symbol == SILENCE and chunk.words[0].end <= p.start < chunk.words[1].start
    ]
    assert pause and sum(p.end - p.start for p in pause) > 0.05


async def test_mandarin_mnemonics_become_ipa_and_language_switches_vanish(engine: EspeakTTS) -> None:
    chunk = await engine.synthesize("我的ATM卡余额是一百元。", MANDARIN)
    assert_speech_chunk(chunk)
    symbols = {p.symbol for p in chunk.phonemes}
    assert {"kʰ", "ʂ", "ɤ"} <= symbols  # 卡 kǎ, 是 shì, 额 é
    assert not symbols & {"kh", "s.", "o-", "(en)", "(cmn)"}
    assert [w.text for w in chunk.words][:4] == ["我", "的", "ATM", "卡"]


async def test_unknown_voice_is_a_clear_error(engine: EspeakTTS) -> None:
    with pytest.raises(TTSError, match="no voice 'no-such-voice'"):
        await engine.synthesize("Hello.", Voice("espeak", "no-such-voice", "en"))
    # The library is still usable after the error.
    assert_speech_chunk(await engine.synthesize("Hello again.", ENGLISH))


def test_calls_from_many_threads_are_serialised() -> None:
    library = EspeakLibrary.shared()
    texts = [("Good morning.", "en-us"), ("早上好。", "cmn")] * 4
    expected = {text: library.synthesize(text, voice) for text, voice in texts[:2]}
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda tv: (tv[0], library.synthesize(*tv)), texts))
    for text, out in results:
        # espeak varies its pitch a little at random, so audio differs by a few samples from
        # run to run; interleaved calls would mix voices, phonemes and lengths.
        assert [p.symbol for p in out.phonemes] == [p.symbol for p in expected[text].phonemes]
        assert [w.position for w in out.words] == [w.position for w in expected[text].words]
        assert abs(len(out.audio) - len(expected[text].audio)) < 0.02 * len(expected[text].audio)


async def test_concurrent_async_synthesis_keeps_each_sentence_its_own(engine: EspeakTTS) -> None:
    english, mandarin = await asyncio.gather(
        engine.synthesize("Thank you for calling.", ENGLISH), engine.synthesize("谢谢您的来电。", MANDARIN)
    )
    assert [w.text for w in english.words] == ["Thank", "you", "for", "calling"]
    assert "".join(w.text for w in mandarin.words) == "谢谢您的来电"
