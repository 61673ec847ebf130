"""Words <-> phonemes through espeak-ng, for engines that give only one side of the timing.

- Online engines (edge) time words but not phonemes: ``phonemes_for_words`` reads each word
  with espeak and spreads its phonemes over the word's time in proportion to the durations
  espeak gives them.
- Piper times phonemes but not words: ``time_words`` reads each word of the sentence with
  espeak and aligns those phonemes to the spoken ones to find where each word lies.

Symbols are espeak's IPA as ``EspeakTTS`` writes them (stress marks dropped), so every
engine's timeline speaks the same alphabet. Words with Chinese characters are read with the
Mandarin voice, others with the American English one, whatever the sentence's language.
"""

from __future__ import annotations

import difflib
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from avatar.speech.lang import Token, is_han, word_tokens
from avatar.speech.tts.espeak import EspeakLibrary, split_span
from avatar.timeline import SILENCE, Phoneme, Word, cover_exactly

_CACHE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class WordSound:
    """How espeak reads one word: phoneme symbols with their durations in seconds."""

    symbols: tuple[str, ...]
    durations: tuple[float, ...]


class Phonemizer:
    """Reads words with the process's espeak-ng; holds a bounded cache of words it has read.

    Thread-safe; the cache holds pronunciations only, never anything about a conversation.
    """

    def __init__(self, library: EspeakLibrary | None = None) -> None:
        self._library = library
        self._lock = threading.Lock()
        self._cache: dict[str, WordSound] = {}

    def _espeak(self) -> EspeakLibrary:
        if self._library is None:
            self._library = EspeakLibrary.shared()
        return self._library

    def word_sound(self, word: str) -> WordSound:
        """espeak's phonemes for ``word`` (pauses left out); empty for punctuation (blocking)."""
        with self._lock:
            cached = self._cache.get(word)
        if cached is not None:
            return cached
        voice = "cmn" if any(is_han(ch) for ch in word) else "en-us"
        out = self._espeak().synthesize(word, voice)
        duration = len(out.audio) / self._espeak().sample_rate
        symbols: list[str] = []
        durations: list[float] = []
        for k, event in enumerate(out.phonemes):
            end = out.phonemes[k + 1].time if k + 1 < len(out.phonemes) else duration
            if event.symbol != SILENCE and end > event.time:
                symbols.append(event.symbol)
                durations.append(end - event.time)
        sound = WordSound(tuple(symbols), tuple(durations))
        with self._lock:
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()
            self._cache[word] = sound
        return sound

    def spread(self, word: Word) -> list[Phoneme]:
        """The phonemes of ``word`` tiling ``[word.start, word.end]`` (blocking)."""
        sound = self.word_sound(word.text)
        total = sum(sound.durations)
        if not sound.symbols or total <= 0 or word.end <= word.start:
            return []
        scale = (word.end - word.start) / total
        phonemes: list[Phoneme] = []
        cursor = word.start
        for k, (symbol, seconds) in enumerate(zip(sound.symbols, sound.durations, strict=True)):
            end = word.end if k == len(sound.symbols) - 1 else cursor + seconds * scale
            phonemes.append(Phoneme(symbol, cursor, end))
            cursor = end
        return phonemes

    def phonemes_for_words(self, words: Sequence[Word], duration: float) -> list[Phoneme]:
        """A phoneme timeline covering ``[0, duration]`` exactly, silent between the words."""
        phonemes: list[Phoneme] = []
        for word in words:
            phonemes.extend(self.spread(word))
        return cover_exactly(phonemes, duration)

    def time_words(self, text: str, phonemes: Sequence[Phoneme]) -> list[Word]:
        """Words of ``text`` timed by aligning their espeak phonemes to the spoken ``phonemes``.

        The alignment tolerates differences between the two readings (a number read out, a
        reduced vowel): spoken phonemes with no counterpart go to the word before them, and a
        word with no spoken phoneme of its own shares the time of the word before it.
        """
        tokens = word_tokens(text)
        spoken = [p for p in phonemes if p.symbol != SILENCE]
        if not tokens or not spoken:
            return []
        reference: list[str] = []
        owners: list[int] = []
        for k, token in enumerate(tokens):
            for symbol in self.word_sound(token.text).symbols:
                reference.append(symbol)
                owners.append(k)
        heard = _owners_of_spoken(reference, owners, [p.symbol for p in spoken])
        spans: dict[int, tuple[float, float]] = {}
        for phoneme, owner in zip(spoken, heard, strict=True):
            start, end = spans.get(owner, (phoneme.start, phoneme.end))
            spans[owner] = (min(start, phoneme.start), max(end, phoneme.end))
        groups: list[tuple[list[Token], float, float]] = []
        orphans: list[Token] = []  # tokens before the first timed one
        for k, token in enumerate(tokens):
            if k in spans:
                start, end = spans[k]
                if groups:
                    start = max(start, groups[-1][2])
                groups.append(([*orphans, token], start, max(start, end)))
                orphans = []
            elif groups:
                groups[-1][0].append(token)
            else:
                orphans.append(token)
        words: list[Word] = []
        for group, start, end in groups:
            words.extend(split_span(group, start, end))
        return words


def _owners_of_spoken(reference: list[str], owners: list[int], spoken: list[str]) -> list[int]:
    """For each spoken symbol, the index of the word it belongs to (non-decreasing)."""
    if not reference:
        return [0] * len(spoken)
    result: list[int | None] = [None] * len(spoken)
    matcher = difflib.SequenceMatcher(None, reference, spoken, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            for j in range(j1, j2):
                result[j] = owners[i1 + j - j1]
        elif tag == "replace":
            for j in range(j1, j2):
                result[j] = owners[i1 + (j - j1) * (i2 - i1) // (j2 - j1)]
    # Inserted phonemes (no counterpart) belong to the word before them, or the first word.
    previous = owners[0]
    filled: list[int] = []
    for owner in result:
        previous = owner if owner is not None else previous
        filled.append(previous)
    return filled
