"""Timed speech: what a TTS engine hands to lip-sync, the stage and the captions.

All times are seconds from the first sample of the chunk's own audio. A chunk's
phoneme timeline covers its audio exactly: the first phoneme starts at 0, each
phoneme starts where the previous ends, and the last ends at ``duration``
(silence, where there is any, is the phoneme ``"_"``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SILENCE = "_"


@dataclass(frozen=True, slots=True)
class Phoneme:
    """One phoneme. ``symbol`` is IPA as espeak-ng writes it (tone digits allowed), or ``"_"``."""

    symbol: str
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class Word:
    """One word (or one Chinese character/word) as it is heard, for caption highlighting."""

    text: str
    start: float
    end: float


@dataclass(slots=True)
class SpeechChunk:
    """One synthesised sentence: mono int16 audio plus its phoneme and word timelines."""

    text: str
    audio: np.ndarray  # int16, shape (n,)
    sample_rate: int
    phonemes: list[Phoneme]
    words: list[Word] = field(default_factory=list)
    lang: str = "en"
    engine: str = ""

    @property
    def duration(self) -> float:
        return len(self.audio) / float(self.sample_rate)


def cover_exactly(phonemes: list[Phoneme], duration: float) -> list[Phoneme]:
    """Return ``phonemes`` adjusted so they tile ``[0, duration]`` with no gap or overlap.

    Gaps become silence, overlaps are clipped, the ends are pinned to 0 and ``duration``.
    """
    out: list[Phoneme] = []
    cursor = 0.0
    for ph in sorted(phonemes, key=lambda p: p.start):
        start = max(ph.start, cursor)
        end = min(ph.end, duration)
        if end <= start:
            continue
        if start > cursor + 1e-6:
            out.append(Phoneme(SILENCE, cursor, start))
        else:
            start = cursor  # a float-rounding gap (shifted, rescaled timings): no gap at all
        out.append(Phoneme(ph.symbol, start, end))
        cursor = end
    if cursor < duration - 1e-6 or not out:
        out.append(Phoneme(SILENCE, cursor, duration))
    else:
        last = out[-1]
        out[-1] = Phoneme(last.symbol, last.start, duration)
    first = out[0]
    out[0] = Phoneme(first.symbol, 0.0, first.end)
    return out
