"""Which language a line of text is in, and how it divides into spoken words.

Only the two languages the product speaks are told apart: Mandarin Chinese (``"zh"``) and
English (``"en"``). Text that mixes them ("我的account余额") counts as the language most of
its words are in, where one Han character counts as one word. ``split_by_lang`` divides one
sentence into the parts each language's voice speaks (see its rules).
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


# -- which voice speaks which part of a sentence ---------------------------------------------

# A clause ends at Chinese clause or sentence punctuation, or at Latin punctuation before a space,
# a Han character or the end ("1,000" and "12:30" go on); closing quotes and brackets stay with
# it. The enumeration comma "、" lists within a phrase ("Visa、万事达卡"): it ends no clause.
_CLAUSE_END_RE = re.compile(
    f"(?:[，；：。！？…｡]+|[,;:.!?]+(?=\\s|$|[{_HAN}]))[\"'”’」』）)\\]】》〉»]*"
)
# A run of Han characters, with the spaces and middle dots between them ("玛丽亚", "招商 银行").
_HAN_RUN_RE = re.compile(f"[{_HAN}]+(?:[\\s·]*[{_HAN}]+)*")


@dataclass(frozen=True, slots=True)
class LangPart:
    """A part of a sentence spoken in one language: its text (verbatim, stripped) and span."""

    text: str
    lang: Lang
    start: int
    end: int


def clause_lang(text: str) -> Lang | None:
    """``"zh"`` when Han characters outnumber Latin words, ``"en"`` when there are Latin words
    and no more Han characters, ``None`` when there is neither (digits, punctuation)."""
    han = len(_HAN_RE.findall(text))
    latin = len(_LATIN_WORD_RE.findall(text))
    if han == 0 and latin == 0:
        return None
    return "zh" if han > latin else "en"


def split_by_lang(sentence: str, default: Lang = "en") -> list[LangPart]:
    """The parts of ``sentence`` in order, each for the voice of its language.

    The rules (simple on purpose):

    1. The sentence is cut into clauses after clause or sentence punctuation (，；：。！？ and
       , ; : . ! ? before a space or a Han character; not "、", not "1,000" or "12:30").
    2. A clause is Chinese when its Han characters outnumber its Latin words, English when it
       has Latin words and no more Han characters (``clause_lang``). So Latin words inside a
       Chinese clause ("您的 Visa 卡已冻结", "请打开 app") stay with the Chinese voice (espeak
       ``cmn`` reads Latin letters), and a whole clause in English ("您好，I'm Maria，请问…")
       gets the English voice.
    3. In an English clause, each run of Han characters ("My name is 玛丽亚") is Chinese: an
       English voice cannot read Han at all.
    4. A clause with neither (digits, punctuation) goes with the part before it, else the one
       after it, else ``default``; neighbouring parts in the same language are joined.

    Parts are verbatim slices of ``sentence`` (stripped); empty input gives no parts.
    """
    spans: list[tuple[int, int, Lang | None]] = []
    start = 0
    for match in _CLAUSE_END_RE.finditer(sentence):
        spans.extend(_clause_spans(sentence, start, match.end()))
        start = match.end()
    if start < len(sentence):
        spans.extend(_clause_spans(sentence, start, len(sentence)))
    # Neutral spans take the language of the part before them, or of the first one after.
    known = [lang for _, _, lang in spans if lang is not None]
    current: Lang = known[0] if known else default
    merged: list[tuple[int, int, Lang]] = []
    for s, e, lang in spans:
        current = lang if lang is not None else current
        if merged and merged[-1][2] == current:
            merged[-1] = (merged[-1][0], e, current)
        else:
            merged.append((s, e, current))
    parts: list[LangPart] = []
    for s, e, lang in merged:
        raw = sentence[s:e]
        text = raw.strip()
        if text:
            lead = len(raw) - len(raw.lstrip())
            parts.append(LangPart(text, lang, s + lead, s + lead + len(text)))
    return parts


def _clause_spans(text: str, start: int, end: int) -> list[tuple[int, int, Lang | None]]:
    """``text[start:end]`` as one clause, or, for an English one, cut around its Han runs."""
    lang = clause_lang(text[start:end])
    if lang != "en":
        return [(start, end, lang)]
    spans: list[tuple[int, int, Lang | None]] = []
    cursor = start
    for run in _HAN_RUN_RE.finditer(text, start, end):
        if run.start() > cursor:
            spans.append((cursor, run.start(), clause_lang(text[cursor : run.start()])))
        spans.append((run.start(), run.end(), "zh"))
        cursor = run.end()
    if cursor < end:
        spans.append((cursor, end, clause_lang(text[cursor:end])))
    return spans
