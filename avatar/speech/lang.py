"""Which language a line of text is in, and how it divides into spoken words.

Only the two languages the product speaks are told apart: Mandarin Chinese (``"zh"``) and
English (``"en"``). Text that mixes them ("我的account余额") counts as the language most of
its words are in, where one Han character counts as one word.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Lang = Literal["zh", "en"]

# CJK Unified Ideographs with extension A and the compatibility block: the characters a
# Mandarin voice reads. Kana/Hangul are not Mandarin and are left to the Latin side.
_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_HAN_RE = re.compile(f"[{_HAN}]")
_LATIN_WORD_RE = re.compile(r"[A-Za-z\u00c0-\u024f]+")
# A spoken word: one Han character, or a run of anything that is neither space nor Han.
_TOKEN_RE = re.compile(f"[{_HAN}]|[^\\s{_HAN}]+")
# Punctuation stripped from the ends of a word for captions ("bank." -> "bank"); currency and
# percent signs stay because they are read out ("$1,000", "3.5%").
_EDGE_PUNCT = "\"'()[]{}<>«»“”‘’「」『』（）《》【】〈〉,.;:!?¡¿，。、；：！？…·—–-~～*_/\\|"
_INITIALISM_RE = re.compile(r"^(?:[A-Za-z]\.){2,}$")


def is_han(char: str) -> bool:
    """True for a Chinese (Han) character."""
    return bool(_HAN_RE.fullmatch(char))


def detect_lang(text: str, default: Lang = "en") -> Lang:
    """``"zh"`` when Han characters outnumber Latin words in ``text``, else ``"en"``.

    Text with neither (digits, punctuation, empty) is ``default``.
    """
    han = len(_HAN_RE.findall(text))
    latin = len(_LATIN_WORD_RE.findall(text))
    if han == 0 and latin == 0:
        return default
    return "zh" if han > latin else "en"


@dataclass(frozen=True, slots=True)
class Token:
    """A spoken word of a text: its caption text and its character span ``[start, end)``."""

    text: str
    start: int
    end: int
    han: bool


def word_tokens(text: str) -> list[Token]:
    """The words of ``text`` in order: each Han character alone, other words split at spaces.

    Surrounding punctuation is dropped from a word ("bank." -> "bank", but "e.g." and "U.S."
    keep their dots); tokens that are only punctuation are skipped.
    """
    tokens: list[Token] = []
    for match in _TOKEN_RE.finditer(text):
        raw = match.group()
        if len(raw) == 1 and is_han(raw):
            tokens.append(Token(raw, match.start(), match.end(), True))
            continue
        if _INITIALISM_RE.match(raw):
            tokens.append(Token(raw, match.start(), match.end(), False))
            continue
        lead = len(raw) - len(raw.lstrip(_EDGE_PUNCT))
        word = raw.strip(_EDGE_PUNCT)
        if word:
            start = match.start() + lead
            tokens.append(Token(word, start, start + len(word), False))
    return tokens
