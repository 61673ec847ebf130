"""Speech recognition: the embedded Whisper, the OpenAI-compatible endpoint (against a local
fake), the registry, domain prompts and the partial-transcript schedule."""

from __future__ import annotations

import asyncio
import wave
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest

from avatar.speech.asr.base import ASRError, PartialSchedule
from avatar.speech.asr.openai import OpenAIASR, transcriptions_url
from avatar.speech.asr.prompt import BANKING_WORDS, domain_prompt, estimate_tokens
from avatar.speech.asr.registry import ASRSettings, build_recognizer
from avatar.speech.asr.whisper import (
    WhisperASR,
    bundled_model_dir,
    collapse_repeats,
    encoder_input,
    token_budget,
)
from tests.fakes.transcribe_server import FakeTranscribeServer

SPEECH = Path(__file__).parent / "data" / "speech"


def clip(name: str) -> np.ndarray:
    with wave.open(str(SPEECH / f"{name}.wav"), "rb") as wav:
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.int16)


def words_of(text: str) -> list[str]:
    return [w.strip(".,?!").lower() for w in text.split()]


# -- Whisper (the embedded tiny.en) -----------------------------------------------------


@pytest.fixture(scope="module")
def whisper() -> Iterator[WhisperASR]:
    engine = WhisperASR(cpu_threads=2)
    yield engine
    asyncio.run(engine.aclose())


@pytest.mark.slow
async def test_whisper_transcribes_a_synthesised_question(whisper: WhisperASR) -> None:
    transcript = await whisper.transcribe(clip("activate_card"), "en", domain_prompt([], "en"))
    words = words_of(transcript.text)
    assert "activate" in words and "card" in words, transcript.text
    assert transcript.lang == "en" and not transcript.partial
    assert transcript.duration == pytest.approx(clip("activate_card").size / 16_000)


@pytest.mark.slow
async def test_domain_prompt_helps_with_banking_words(whisper: WhisperASR) -> None:
    prompted = await whisper.transcribe(
        clip("account_balance"), "en", domain_prompt(["account balance"], "en")
    )
    assert "account balance" in prompted.text.lower(), prompted.text


@pytest.mark.slow
async def test_whisper_serves_concurrent_requests_and_partials(whisper: WhisperASR) -> None:
    audio = clip("stop_please")
    partial, final = await asyncio.gather(
        whisper.transcribe(audio[: audio.size // 2], "en", partial=True),
        whisper.transcribe(audio, "en"),
    )
    assert partial.partial and not final.partial
    assert "question" in words_of(final.text), final.text
    assert "wait" in words_of(partial.text), partial.text


@pytest.mark.slow
async def test_whisper_edge_cases(whisper: WhisperASR) -> None:
    assert not whisper.multilingual
    empty = await whisper.transcribe(np.zeros(0, np.int16), None)
    assert empty.text == "" and empty.duration == 0.0
    with pytest.raises(ASRError, match="English-only"):
        await whisper.transcribe(clip("uh_huh"), "zh-CN")
    with pytest.raises(ASRError, match="int16"):
        await whisper.transcribe(np.zeros(1600, np.float32), "en")


@pytest.mark.slow
async def test_the_short_window_recognises_a_noisy_question_once(whisper: WhisperASR) -> None:
    # Encoders given only a little more than the utterance make tiny.en say it again and again
    # in noise ("How do I activate my new card? How do I activate my new card? ..."); the
    # 10 s window does not, and recognises what the full 30 s window does.
    audio = np.concatenate([np.zeros(4800, np.int16), clip("activate_card"), np.zeros(1600, np.int16)])
    noise = np.random.default_rng(0).normal(0.0, 0.02 * 32768, audio.size)
    noisy = np.clip(audio + noise, -32768, 32767).astype(np.int16)
    assert whisper.window == 10.0
    transcript = await whisper.transcribe(noisy, "en", domain_prompt([], "en"))
    assert words_of(transcript.text) == ["how", "do", "i", "activate", "my", "new", "card"], transcript.text


def test_the_encoder_sees_the_window_or_the_utterance_and_a_margin() -> None:
    padded = np.zeros((80, 3000), np.float32)
    padded[:, :150] = -0.5  # 1.5 s of features, then faster-whisper's zero padding
    assert encoder_input(padded, 1000).shape == (1, 80, 1000)
    assert encoder_input(padded, 100).shape == (1, 80, 250)  # the utterance and 1 s after it
    assert encoder_input(padded, 3000).shape == (1, 80, 3000)
    padded[:, :2950] = -0.5  # a long utterance: never more than faster-whisper gave
    assert encoder_input(padded, 1000).shape == (1, 80, 3000)
    odd = np.zeros((1, 80, 3000), np.float32)
    odd[..., :51] = 1.0
    out = encoder_input(odd, 101)
    assert out.shape == (1, 80, 152) and out.flags.c_contiguous  # even: the encoder halves it
    assert np.array_equal(out[..., :51], odd[..., :51]) and not out[..., 51:].any()
    assert encoder_input(np.zeros((80, 3000), np.float32), 0).shape == (1, 80, 100)  # silence


def test_repeated_sentences_are_collapsed() -> None:
    looped = "How can I set up a standing order? How can I set up a standing order? how can I set up a"
    assert collapse_repeats(looped) == "How can I set up a standing order?"
    assert collapse_repeats(" What is my balance? What is my balance. ") == "What is my balance?"
    assert collapse_repeats("好的。好的。") == "好的。" and collapse_repeats("好的。谢谢。") == "好的。谢谢。"
    # Sentences that only share words, and a new last sentence, stay.
    assert collapse_repeats("My card. My card is lost.") == "My card. My card is lost."
    assert collapse_repeats("Wait, stop, I have another question.") == "Wait, stop, I have another question."
    assert collapse_repeats("Hello. Hello") == "Hello."  # a cut-off repeat of the one before
    assert collapse_repeats("") == ""


def test_the_token_budget_grows_with_the_audio_and_fits_the_decoder() -> None:
    assert token_budget(0.0) == 16 and token_budget(2.0) == 36
    assert token_budget(30.0) == 448 - 223 - 5  # beside faster-whisper's longest prompt


def test_the_window_must_be_within_whispers_own() -> None:
    for window in (0.0, -1.0, 31.0):
        with pytest.raises(ASRError, match="window"):
            WhisperASR(window=window)


@pytest.mark.slow
async def test_whisper_survives_a_cancelled_request(whisper: WhisperASR) -> None:
    # A session cancels recognition when the customer barges in again or hangs up.
    running = asyncio.create_task(whisper.transcribe(clip("stop_please"), "en"))
    queued = asyncio.create_task(whisper.transcribe(clip("uh_huh"), "en"))
    await asyncio.sleep(0)  # both are submitted; the first occupies the worker
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    assert "question" in words_of((await running).text)
    after = await whisper.transcribe(clip("account_balance"), "en", domain_prompt([], "en"))
    assert "balance" in words_of(after.text)


# -- OpenAI-compatible endpoint ----------------------------------------------------------


@pytest.fixture
async def fake() -> AsyncIterator[FakeTranscribeServer]:
    async with FakeTranscribeServer(text=" How do I activate my new card? ") as server:
        yield server


async def test_openai_posts_wav_and_fields_and_reads_text(fake: FakeTranscribeServer) -> None:
    fake.api_key = "sk-test"
    asr = OpenAIASR(fake.url, model="whisper-large-v3", api_key="sk-test", timeout=5.0)
    audio = clip("activate_card")
    transcript = await asr.transcribe(audio, "zh-CN", "Bank call about: debit card.")
    await asr.aclose()
    assert transcript.text == "How do I activate my new card?"
    assert transcript.lang == "zh" and transcript.duration == pytest.approx(audio.size / 16_000)
    (request,) = fake.requests
    assert request.model == "whisper-large-v3" and request.language == "zh"
    assert request.prompt == "Bank call about: debit card." and request.response_format == "json"
    assert request.sample_rate == 16_000 and np.array_equal(request.audio, audio)
    assert request.authorization == "Bearer sk-test"


async def test_openai_without_optional_fields(fake: FakeTranscribeServer) -> None:
    asr = OpenAIASR(fake.url + "/audio/transcriptions")  # the full URL works too
    transcript = await asr.transcribe(clip("uh_huh"))
    await asr.aclose()
    assert transcript.lang is None
    (request,) = fake.requests
    assert request.language is None and request.prompt is None and request.authorization is None


async def test_openai_http_500_is_an_asr_error(fake: FakeTranscribeServer) -> None:
    fake.mode = "error"
    asr = OpenAIASR(fake.url)
    with pytest.raises(ASRError, match=r"HTTP 500: .*overloaded"):
        await asr.transcribe(clip("uh_huh"), "en")
    await asr.aclose()


async def test_openai_wrong_key_is_an_asr_error(fake: FakeTranscribeServer) -> None:
    fake.api_key = "right"
    asr = OpenAIASR(fake.url, api_key="wrong")
    with pytest.raises(ASRError, match="HTTP 401"):
        await asr.transcribe(clip("uh_huh"), "en")
    await asr.aclose()


async def test_openai_timeout_is_an_asr_error(fake: FakeTranscribeServer) -> None:
    fake.mode = "hang"
    asr = OpenAIASR(fake.url, timeout=0.3)
    with pytest.raises(ASRError, match=r"did not answer within 0\.3 s"):
        await asr.transcribe(clip("uh_huh"), "en")
    await asr.aclose()
    assert len(fake.requests) == 1  # it did reach the server


async def test_openai_bad_answer_and_unreachable_are_asr_errors(fake: FakeTranscribeServer) -> None:
    fake.mode = "bad_json"
    asr = OpenAIASR(fake.url)
    with pytest.raises(ASRError, match="invalid JSON"):
        await asr.transcribe(clip("uh_huh"), "en")
    await asr.aclose()
    nobody = OpenAIASR("http://127.0.0.1:9/v1", timeout=2.0)  # the discard port: refused
    with pytest.raises(ASRError, match="cannot reach"):
        await nobody.transcribe(clip("uh_huh"), "en")
    await nobody.aclose()


@pytest.mark.slow
async def test_openai_client_against_a_whisper_backed_server(whisper: WhisperASR) -> None:
    async with FakeTranscribeServer(recognizer=whisper) as server:
        asr = OpenAIASR(server.url)
        transcript = await asr.transcribe(clip("activate_card"), "en", domain_prompt([], "en"))
        await asr.aclose()
    assert {"activate", "card"} <= set(words_of(transcript.text)), transcript.text


def test_transcriptions_url() -> None:
    assert transcriptions_url("http://h:8000/v1") == "http://h:8000/v1/audio/transcriptions"
    assert (
        transcriptions_url("https://api.openai.com/v1/") == "https://api.openai.com/v1/audio/transcriptions"
    )
    assert transcriptions_url("http://h/v1/audio/transcriptions") == "http://h/v1/audio/transcriptions"
    with pytest.raises(ASRError, match="http"):
        transcriptions_url("h:8000/v1")


# -- registry ----------------------------------------------------------------------------


def test_registry_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ASRError, match="unknown asr engine 'vosk'"):
        build_recognizer(ASRSettings(engine="vosk"))
    with pytest.raises(ASRError, match="needs a url"):
        build_recognizer(ASRSettings(engine="openai"))
    with pytest.raises(ASRError, match="not found"):
        build_recognizer(ASRSettings(model_dir=tmp_path / "nowhere"))
    with pytest.raises(ASRError, match=r"window must be within \(0, 30\]"):
        build_recognizer(ASRSettings(window=40.0))
    (tmp_path / "model.bin").write_bytes(b"")
    with pytest.raises(ASRError, match=r"missing config\.json, tokenizer\.json"):
        build_recognizer(ASRSettings(model_dir=tmp_path))


def test_registry_builds_the_openai_client() -> None:
    asr = build_recognizer(ASRSettings(engine="OpenAI", url="http://localhost:8000/v1", model="m", timeout=3))
    assert isinstance(asr, OpenAIASR)
    assert (
        asr.name == "openai"
        and asr.url == "http://localhost:8000/v1/audio/transcriptions"
        and asr.model == "m"
    )
    assert not asr.supports_partial


@pytest.mark.slow
def test_registry_builds_the_embedded_whisper() -> None:
    asr = build_recognizer(ASRSettings())
    assert isinstance(asr, WhisperASR) and asr.supports_partial
    assert asr.model_dir == bundled_model_dir()

    async def close_then_use() -> None:
        await asr.aclose()
        with pytest.raises(ASRError, match="closed"):
            await asr.transcribe(clip("uh_huh"), "en")

    asyncio.run(close_then_use())


# -- prompts and partial schedule ---------------------------------------------------------


def test_domain_prompt_puts_given_words_first_and_dedupes() -> None:
    prompt = domain_prompt(["Card activation", "card ACTIVATION", "  ", "PIN"], "en")
    assert prompt.startswith("Bank customer service call about Card activation, PIN, account balance")
    assert prompt.count("PIN") == 1 and prompt.lower().count("card activation") == 1
    assert prompt.endswith(".")


def test_domain_prompt_keeps_within_the_token_budget() -> None:
    many = [f"term number {i}" for i in range(200)]
    prompt = domain_prompt(many, "en", max_tokens=60)
    assert estimate_tokens(prompt) <= 60
    assert "term number 0" in prompt and "term number 199" not in prompt
    assert domain_prompt([], "en", max_tokens=5) == ""


def test_domain_prompt_in_chinese() -> None:
    prompt = domain_prompt(["挂失"], "zh-CN")
    assert prompt.startswith("以下是普通话的银行客服对话，关于挂失、账户余额")
    assert prompt.endswith("。") and "、" in prompt
    assert estimate_tokens(prompt) <= 160
    assert set(BANKING_WORDS) == {"en", "zh"}


def test_token_estimate_errs_high_against_whisper_tokenizer() -> None:
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer.from_file(str(bundled_model_dir() / "tokenizer.json"))
    for lang in ("en", "zh"):
        prompt = domain_prompt(["overdraft fee", "手续费"], lang, max_tokens=223)
        assert len(tok.encode(prompt).ids) <= estimate_tokens(prompt) <= 223


def test_partial_schedule_is_rate_limited_on_audio_time() -> None:
    schedule = PartialSchedule(interval=0.6, min_audio=0.5)
    assert not schedule.due(0.3)  # too little audio yet
    assert schedule.due(0.6)
    schedule.started(0.6)
    assert not schedule.due(1.5)  # one at a time
    schedule.finished()
    assert not schedule.due(1.0) and schedule.due(1.2)
    schedule.reset()
    assert schedule.due(0.5)
