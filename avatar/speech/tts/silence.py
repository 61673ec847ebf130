"""Trimming the silence a TTS engine puts around a sentence.

Piper starts every sentence with 30 to 70 ms of near-silence and ends it with 100 to 230 ms.
Before the first sentence of a reply that lead-in is only waiting, and where a sentence was
cut in two (so its first piece could be synthesised sooner) the piece's closing silence and
the next piece's lead-in add up to a longer pause than the voice makes at that point when it
reads the sentence whole. The audio, the phoneme timeline and the word timings are trimmed
together, so the mouth still follows the audio sample position.
"""

from __future__ import annotations

import numpy as np

from avatar.timeline import Phoneme, SpeechChunk, Word, cover_exactly

#: A sample at or under this magnitude (about -60 dBFS) is silence.
SILENCE_LEVEL = 32


def voiced_span(audio: np.ndarray, level: int = SILENCE_LEVEL) -> tuple[int, int] | None:
    """``(first, end)``: the first sample louder than ``level`` and one past the last; ``None``
    when every sample is silence."""
    loud = np.flatnonzero(np.abs(audio.astype(np.int32)) > level)
    if len(loud) == 0:
        return None
    return int(loud[0]), int(loud[-1]) + 1


def trim_silence(chunk: SpeechChunk, *, lead: float | None = None, tail: float | None = None) -> SpeechChunk:
    """``chunk`` with at most ``lead`` seconds of silence before its first voiced sample and at
    most ``tail`` after its last (``None``: that end as it is). Returns ``chunk`` itself when
    nothing is cut (or it is all silence); otherwise a new chunk with new arrays."""
    span = voiced_span(chunk.audio)
    if span is None:
        return chunk
    rate = chunk.sample_rate
    n = len(chunk.audio)
    start = max(0, span[0] - round(lead * rate)) if lead is not None else 0
    end = min(n, span[1] + round(tail * rate)) if tail is not None else n
    if start == 0 and end == n:
        return chunk
    shift = start / rate
    duration = (end - start) / rate
    phonemes = cover_exactly(
        [Phoneme(p.symbol, p.start - shift, p.end - shift) for p in chunk.phonemes], duration
    )
    words: list[Word] = []
    for w in chunk.words:
        w_start = min(max(0.0, w.start - shift), duration)
        w_end = min(max(w_start, w.end - shift), duration)
        words.append(Word(w.text, w_start, w_end))
    return SpeechChunk(
        text=chunk.text,
        audio=np.array(chunk.audio[start:end], dtype=np.int16),
        sample_rate=rate,
        phonemes=phonemes,
        words=words,
        lang=chunk.lang,
        engine=chunk.engine,
    )
