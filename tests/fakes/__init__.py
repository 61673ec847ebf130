"""Test doubles (a fake edge TTS service) and the checks every TTS engine's output must pass."""

from __future__ import annotations

import itertools

import numpy as np

from avatar.timeline import SpeechChunk


def assert_speech_chunk(chunk: SpeechChunk) -> None:
    """The TTS contract: audible int16 audio, a phoneme timeline that tiles it exactly, and
    words in order inside it."""
    assert chunk.audio.dtype == np.int16 and chunk.audio.ndim == 1
    assert chunk.duration > 0
    rms = float(np.sqrt(np.mean(chunk.audio.astype(np.float64) ** 2)))
    assert rms > 300, f"audio is (nearly) silent: RMS {rms:.1f}"
    phonemes = chunk.phonemes
    assert phonemes, "no phonemes"
    assert phonemes[0].start == 0.0
    for before, after in itertools.pairwise(phonemes):
        assert after.start == before.end, f"gap or overlap between {before} and {after}"
    assert all(p.end > p.start for p in phonemes), "empty phoneme"
    assert abs(phonemes[-1].end - chunk.duration) < 1e-9
    assert all(p.symbol and "(" not in p.symbol and "ˈ" not in p.symbol for p in phonemes)
    previous_end = 0.0
    for word in chunk.words:
        assert word.text.strip()
        assert 0.0 <= word.start <= word.end <= chunk.duration + 1e-9, word
        assert word.start >= previous_end - 1e-9, f"{word} starts before the word before it ends"
        previous_end = word.end
