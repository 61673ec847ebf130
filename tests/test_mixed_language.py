"""Lines that mix Chinese and English: each part is spoken by the voice of its language, with
the real engines (piper for English, espeak cmn for Mandarin), one chunk (caption) per sentence."""

from __future__ import annotations

import itertools
from contextlib import aclosing

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avatar.config import Settings, VoiceChoice
from avatar.session import TTSSpeechSource
from avatar.speech.lang import clause_lang, split_by_lang, word_tokens
from avatar.speech.resample import resample
from avatar.speech.tts.base import Voice
from avatar.speech.tts.espeak import split_span
from avatar.speech.tts.registry import TTSRegistry
from avatar.speech.tts.stream import join_chunks, speak_stream
from avatar.timeline import SpeechChunk
from tests.fakes import assert_speech_chunk

PIPER = Voice("piper", "en_US-joe-medium", "en")
CMN = Voice("espeak", "cmn", "zh")
VOICES = {"en": PIPER, "zh": CMN}


class RecordingRegistry(TTSRegistry):
    """The real registry, noting which text each voice was asked to speak."""

    def __init__(self) -> None:
        voices = {"*:en": VoiceChoice("piper", "en_US-joe-medium"), "*:zh": VoiceChoice("espeak", "cmn")}
        super().__init__(Settings(voices=voices))
        self.asked: list[tuple[str, str]] = []  # (voice engine, text)

    async def synthesize(self, sentence: str, voice: Voice) -> SpeechChunk:
        self.asked.append((voice.engine, sentence))
        return await super().synthesize(sentence, voice)


@pytest.fixture(scope="module")
def registry() -> RecordingRegistry:
    return RecordingRegistry()  # piper loads once for the module


async def speak(registry: TTSRegistry, text: str, **kwargs: int) -> list[SpeechChunk]:
    voice_for = VOICES.__getitem__
    async with aclosing(speak_stream(registry, text, PIPER, voice_for=voice_for, **kwargs)) as stream:
        return [chunk async for chunk in stream]


# --- which language each part is --------------------------------------------------------------


@pytest.mark.parametrize(
    ("sentence", "parts"),
    [
        # Latin words inside a Chinese clause stay with the Chinese voice.
        ("您的 Visa 卡已冻结。", [("您的 Visa 卡已冻结。", "zh")]),
        ("请打开手机银行 app 查看余额。", [("请打开手机银行 app 查看余额。", "zh")]),
        ("Visa、万事达卡都可以。", [("Visa、万事达卡都可以。", "zh")]),  # 、 lists, it ends no clause
        ("请在 10:30 前到 branch。", [("请在 10:30 前到 branch。", "zh")]),
        # A whole clause in English inside a Chinese sentence gets the English voice.
        (
            "您好，I'm Maria from the bank，请问有什么可以帮您？",
            [("您好，", "zh"), ("I'm Maria from the bank，", "en"), ("请问有什么可以帮您？", "zh")],
        ),
        ("OK，我帮您查一下。", [("OK，", "en"), ("我帮您查一下。", "zh")]),
        # Han inside English: the English voice cannot read it, so each run is Chinese.
        ("My name is 玛丽亚.", [("My name is", "en"), ("玛丽亚.", "zh")]),
        ("Your 信用卡 has been frozen.", [("Your", "en"), ("信用卡", "zh"), ("has been frozen.", "en")]),
        ("Please call 95555, 谢谢。", [("Please call 95555,", "en"), ("谢谢。", "zh")]),
        # Whole sentences, and digits that go with their neighbours.
        ("Hello, I'm Maria.", [("Hello, I'm Maria.", "en")]),
        ("您好，我是玛丽亚。", [("您好，我是玛丽亚。", "zh")]),
        ("95555，请拨打。", [("95555，请拨打。", "zh")]),
    ],
)
def test_split_by_lang_on_real_lines(sentence: str, parts: list[tuple[str, str]]) -> None:
    got = split_by_lang(sentence)
    assert [(p.text, p.lang) for p in got] == parts
    assert all(sentence[p.start : p.end] == p.text for p in got)  # verbatim slices, in order
    assert [p.start for p in got] == sorted(p.start for p in got)


def test_text_with_neither_script_takes_the_default() -> None:
    assert [(p.text, p.lang) for p in split_by_lang("95555.", "zh")] == [("95555.", "zh")]
    assert [(p.text, p.lang) for p in split_by_lang("95555.", "en")] == [("95555.", "en")]
    assert split_by_lang("  ") == []
    assert clause_lang("1,000") is None
    assert clause_lang("您的 Visa 卡") == "zh" and clause_lang("My name is 玛丽亚") == "en"  # a tie is English


MIXED_TEXT = st.lists(st.sampled_from([*"ab Z9您好卡，。,.!?;:、 \n“”'", "Visa", "银行"]), max_size=30).map("".join)


@settings(max_examples=300, deadline=None)
@given(MIXED_TEXT, st.sampled_from(["en", "zh"]))
def test_split_by_lang_keeps_every_character_once(text: str, default: str) -> None:
    parts = split_by_lang(text, "zh" if default == "zh" else "en")
    assert "".join("".join(p.text.split()) for p in parts) == "".join(text.split())
    assert all(p.text and p.text == p.text.strip() and text[p.start : p.end] == p.text for p in parts)
    assert all(a.end <= b.start and a.lang != b.lang for a, b in itertools.pairwise(parts))
    assert all(clause_lang(p.text) is not None for p in parts) or len(parts) == 1  # digits never alone


# --- Chinese caption words never straddle punctuation -----------------------------------------


def test_chinese_words_do_not_join_across_punctuation() -> None:
    tokens = word_tokens("您好，我是玛丽亚。")
    words = split_span(tokens, 0.0, 1.0)  # read together in one timed span (as piper's alignment may)
    assert [w.text for w in words] == ["您好", "我是玛丽亚"]
    assert [w.text for w in split_span(word_tokens("好 我"), 0.0, 1.0)] == ["好", "我"]


# --- speaking mixed lines -------------------------------------------------------------------


async def test_each_sentence_is_spoken_by_the_voice_of_its_language(registry: RecordingRegistry) -> None:
    text = "Hello, I'm Maria. 您好，我是玛丽亚。"
    chunks = await speak(registry, text)
    assert [c.text for c in chunks] == ["Hello, I'm Maria.", "您好，我是玛丽亚。"]
    assert [(c.engine, c.lang) for c in chunks] == [("piper", "en"), ("espeak", "zh")]
    for chunk in chunks:
        assert_speech_chunk(chunk)
    assert [w.text for w in chunks[0].words] == ["Hello", "I'm", "Maria"]
    zh_words = [w.text for w in chunks[1].words]
    assert "".join(zh_words) == "您好我是玛丽亚"
    assert not any("好" in w and "我" in w for w in zh_words)  # the "好我" caption word is gone


async def test_a_clause_in_the_other_script_is_spoken_by_its_voice_in_the_sentence_chunk(
    registry: RecordingRegistry,
) -> None:
    text = "您好，I'm Maria from the bank，请问有什么可以帮您？"
    registry.asked.clear()
    chunks = await speak(registry, text, first_max_units=0)  # the whole sentence as one piece
    assert registry.asked == [
        ("espeak", "您好，"),
        ("piper", "I'm Maria from the bank，"),
        ("espeak", "请问有什么可以帮您？"),
    ]
    [chunk] = chunks  # one caption for the sentence
    assert chunk.text == text and chunk.lang == "zh" and chunk.engine == "espeak+piper"
    assert_speech_chunk(chunk)
    # Each part's words are its own engine's, in order.
    asked = list(registry.asked)  # (synthesize appends to registry.asked)
    parts = [await registry.synthesize(t, VOICES["zh" if e == "espeak" else "en"]) for e, t in asked]
    assert [w.text for w in chunk.words] == [w.text for part in parts for w in part.words]
    english = [w for w in chunk.words if w.text in ("I'm", "Maria", "from", "the", "bank")]
    assert len(english) == 5
    first_zh_end = chunk.words[len(parts[0].words) - 1].end
    assert all(w.start >= first_zh_end for w in english)
    assert chunk.duration < sum(p.duration for p in parts)  # silence at the joins was trimmed


async def test_latin_words_in_chinese_stay_with_the_chinese_voice(registry: RecordingRegistry) -> None:
    registry.asked.clear()
    [chunk] = await speak(registry, "您的 Visa 卡已冻结。")
    assert registry.asked == [("espeak", "您的 Visa 卡已冻结。")]
    assert (chunk.engine, chunk.lang) == ("espeak", "zh")
    assert "Visa" in [w.text for w in chunk.words]


async def test_a_chinese_name_in_english_is_read_by_the_chinese_voice(registry: RecordingRegistry) -> None:
    registry.asked.clear()
    [chunk] = await speak(registry, "My name is 玛丽亚.")
    assert registry.asked == [("piper", "My name is"), ("espeak", "玛丽亚.")]
    assert (chunk.text, chunk.lang, chunk.engine) == ("My name is 玛丽亚.", "en", "piper+espeak")
    assert_speech_chunk(chunk)
    words = [w.text for w in chunk.words]
    assert words[:3] == ["My", "name", "is"] and "".join(words[3:]) == "玛丽亚"  # espeak times each character
    assert chunk.words[3].start >= chunk.words[2].end


async def test_mixed_parts_are_cached_and_the_first_piece_stays_short(registry: RecordingRegistry) -> None:
    text = "您好，I'm Maria from the bank，请问有什么可以帮您？"
    first = await speak(registry, text)
    assert [c.text for c in first] == ["您好，I'm Maria", "from the bank，请问有什么可以帮您？"]  # cut as before
    assert [c.lang for c in first] == ["en", "zh"]  # two English words outnumber two Han characters
    syntheses = registry.syntheses
    again = await speak(registry, text)
    assert registry.syntheses == syntheses  # every part came from the cache
    assert all(np.array_equal(a.audio, b.audio) for a, b in zip(first, again, strict=True))


async def test_the_session_source_uses_the_avatars_voice_per_part() -> None:
    registry = RecordingRegistry()
    source = TTSSpeechSource(registry, "maria", "en")
    # The caller's language does not force one voice on the line ...
    chunks = [c async for c in source.stream("Hello, I'm Maria. 您好，我是玛丽亚。", "zh")]
    assert [(c.engine, c.lang) for c in chunks] == [("piper", "en"), ("espeak", "zh")]
    # ... it decides parts with neither script.
    registry.asked.clear()
    [chunk] = [c async for c in source.stream("95555.", "zh")]
    assert registry.asked == [("espeak", "95555.")] and chunk.lang == "zh"
    registry.close()


async def test_an_offline_render_speaks_each_language_with_its_voice(registry: RecordingRegistry) -> None:
    """``avatar render`` places a mixed line on its stage as a live call says it."""
    from avatar.clock import FakeClock
    from avatar.idle import IdleAnimator
    from avatar.offline import synthesize_onto
    from avatar.stage import Stage
    from tests.stage_fakes import PlainRenderer

    stage = Stage(PlainRenderer(), FakeClock(start=0.0, auto=True).media_clock(), IdleAnimator(7))
    registry.asked.clear()
    assert await synthesize_onto(stage, registry, "Hello, I'm Maria. 您好，我是玛丽亚。", PIPER, VOICES.__getitem__) == 2
    assert registry.asked == [("piper", "Hello, I'm Maria."), ("espeak", "您好，我是玛丽亚。")]
    assert stage.speaking_until() > 1.0


# --- joining chunks ------------------------------------------------------------------------


async def test_join_chunks_resamples_and_shifts_timelines(registry: RecordingRegistry) -> None:
    zh = await registry.synthesize("您好。", CMN)
    en = await registry.synthesize("Hello.", Voice("espeak", "en-us", "en"))
    at_24k = SpeechChunk(
        text=en.text,
        audio=resample(en.audio, en.sample_rate, 24000),
        sample_rate=24000,
        phonemes=en.phonemes,
        words=en.words,
        lang="en",
        engine="edge",
    )
    joined = join_chunks("您好。Hello.", [zh, at_24k], "zh")
    assert joined.sample_rate == zh.sample_rate and joined.engine == "espeak+edge"
    assert abs(joined.duration - (zh.duration + en.duration)) < 0.01
    assert_speech_chunk(joined)
    assert [w.text for w in joined.words] == ["您好", "Hello"]
    assert abs(joined.words[1].start - (zh.duration + en.words[0].start)) < 0.01
    with pytest.raises(ValueError):
        join_chunks("", [], "en")


def test_heard_words_are_joined_as_each_script_writes_them() -> None:
    from avatar.speaker import join_words

    assert join_words(["您好", "欢", "迎", "使用", "Apple", "Pay", "支付"]) == "您好欢迎使用Apple Pay支付"
    assert join_words(["Thank", "you", "for", "waiting"]) == "Thank you for waiting"
    assert join_words(["Hello", "您好", "welcome"]) == "Hello您好welcome"
    assert join_words([]) == ""
