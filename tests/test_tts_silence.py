"""Trimming a chunk's leading and trailing silence: audio, phonemes and words move together."""

from __future__ import annotations

import numpy as np
import pytest

from avatar.speech.tts.silence import SILENCE_LEVEL, trim_silence, voiced_span
from avatar.timeline import SILENCE, Phoneme, SpeechChunk, Word
from tests.fakes import assert_speech_chunk

RATE = 22_050


def padded_tone(lead: float, voiced: float, tail: float) -> SpeechChunk:
    """Silence, a tone, silence; phonemes "_ a _" and one word over the tone."""
    n_lead, n_voiced, n_tail = round(lead * RATE), round(voiced * RATE), round(tail * RATE)
    t = np.arange(n_voiced) / RATE
    tone = (8000 * np.sin(2 * np.pi * 220 * t)).astype(np.int16)
    tone[[0, -1]] = 8000  # the first and last voiced samples are loud, whatever the phase
    audio = np.concatenate([np.full(n_lead, 5, np.int16), tone, np.zeros(n_tail, np.int16)])
    duration = len(audio) / RATE
    start, end = n_lead / RATE, (n_lead + n_voiced) / RATE
    return SpeechChunk(
        text="ah",
        audio=audio,
        sample_rate=RATE,
        phonemes=[Phoneme(SILENCE, 0.0, start), Phoneme("a", start, end), Phoneme(SILENCE, end, duration)],
        words=[Word("ah", start, end)],
        engine="piper",
    )


def test_voiced_span_ignores_low_noise() -> None:
    chunk = padded_tone(0.05, 0.3, 0.2)
    first, end = voiced_span(chunk.audio) or (0, 0)
    assert first == round(0.05 * RATE) and end == round(0.35 * RATE)
    assert voiced_span(np.full(100, SILENCE_LEVEL, np.int16)) is None


def test_lead_is_cut_to_what_is_kept_and_everything_moves_with_the_audio() -> None:
    chunk = padded_tone(0.05, 0.3, 0.2)
    before = (chunk.audio.copy(), list(chunk.phonemes), list(chunk.words))
    trimmed = trim_silence(chunk, lead=0.01)
    assert_speech_chunk(trimmed)
    cut = round(0.05 * RATE) - round(0.01 * RATE)
    assert np.array_equal(trimmed.audio, chunk.audio[cut:])
    assert trimmed.duration == pytest.approx(chunk.duration - cut / RATE)
    voiced = trimmed.phonemes[1]
    assert voiced.symbol == "a" and voiced.start == pytest.approx(0.01, abs=1 / RATE)
    assert trimmed.phonemes[0] == Phoneme(SILENCE, 0.0, voiced.start)
    assert trimmed.phonemes[-1].end == pytest.approx(trimmed.duration)
    assert trimmed.words[0].start == pytest.approx(0.01, abs=1 / RATE)
    assert trimmed.words[0].end == pytest.approx(0.31, abs=1 / RATE)
    # The original is untouched (it may be a cached chunk other sessions share).
    assert np.array_equal(chunk.audio, before[0]) and (chunk.phonemes, chunk.words) == before[1:]


def test_tail_is_cut_and_the_last_phoneme_ends_with_the_audio() -> None:
    chunk = padded_tone(0.05, 0.3, 0.2)
    trimmed = trim_silence(chunk, tail=0.05)
    assert_speech_chunk(trimmed)
    assert len(trimmed.audio) == round(0.35 * RATE) + round(0.05 * RATE)
    assert trimmed.phonemes[0] == chunk.phonemes[0]
    assert [p.symbol for p in trimmed.phonemes] == [SILENCE, "a", SILENCE]
    assert trimmed.phonemes[-1].end == pytest.approx(trimmed.duration)


def test_nothing_to_cut_returns_the_chunk_itself() -> None:
    chunk = padded_tone(0.005, 0.3, 0.01)
    assert trim_silence(chunk, lead=0.01, tail=0.05) is chunk
    assert trim_silence(chunk) is chunk
    quiet = SpeechChunk("", np.full(RATE // 10, 3, np.int16), RATE, [Phoneme(SILENCE, 0.0, 0.1)])
    assert trim_silence(quiet, lead=0.0, tail=0.0) is quiet
