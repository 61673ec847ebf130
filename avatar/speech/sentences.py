"""Split a reply into sentences so speech can start before the whole reply is synthesised.

Chinese sentences end at 。！？；… (and their full-width forms); English ones at . ! ? ; when a
space, the end of the text or a Chinese character follows. A period inside a number
("3.5%", "$1,000.00"), after an abbreviation ("e.g.", "Mr.", "No. 5") or an initial
("J. Smith") does not end a sentence. Line breaks always do. Closing quotes and brackets stay
with the sentence they close.

The first sentence is what the listener waits for (its synthesis time is the reply's
latency), so when it is longer than ``first_max_units`` (see ``speech_units``; the default is
about a second and a half of speech) it is cut once more: at a clause break (，、：, or ", "),
or, where no clause break comes early enough, before a conjunction or preposition that opens
a phrase ("and", "or", "from", "within"...), never inside a phrase. The rest of that sentence
becomes the next piece; when it is very long it is cut once more at a clause break, so that it
is ready before the first piece has been heard. Later sentences are kept whole.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator

from avatar.speech.lang import is_han

_CJK_TERMINATORS = "。！？；…｡"  # the full-width period "．" is handled with "."
_LATIN_TERMINATORS = "!?;"
_CLOSERS = "\"'”’」』）)]】》〉»"
_CLAUSE_BREAKS_CJK = "，、：；"
_CLAUSE_BREAKS_LATIN = ",:—"

# Abbreviations after which a period never ends a sentence (titles, Latin short forms).
_NEVER_FINAL = {
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "rev", "hon", "gen", "capt", "lt",
    "col", "sgt", "e.g", "i.e", "cf", "vs", "approx", "viz", "ca", "incl", "dept", "est", "attn",
}  # fmt: skip
# Abbreviations that end a sentence only when a capitalised (or Chinese) word follows.
_MAYBE_FINAL = {
    "etc", "inc", "ltd", "co", "corp", "plc", "llc", "a.m", "p.m", "u.s", "u.k", "jan", "feb",
    "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "mon", "tue", "wed",
    "thu", "fri", "sat", "sun",
}  # fmt: skip
# Abbreviations that are not final when a number follows ("No. 5", "p. 12").
_BEFORE_NUMBER = {"no", "nos", "vol", "p", "pp", "fig", "art", "ch", "sec", "tel", "ext", "acct"}

_WORD_BEFORE_DOT = re.compile(r"([A-Za-z](?:[A-Za-z.]*[A-Za-z])?)$")

DEFAULT_FIRST_MAX_UNITS = 20
_MIN_PIECE_UNITS = 10
#: The rest of a cut first sentence is cut again (at a clause break) beyond this many times
#: ``first_max_units``: its synthesis must end before the first piece has been heard.
_SECOND_PIECE_FACTOR = 4
# Words a phrase can open with: the first piece may end before one of them.
_PHRASE_OPENERS = {
    "and", "or", "but", "so", "because", "if", "when", "while", "until", "unless", "which",
    "that", "who", "where", "to", "for", "with", "within", "from", "in", "on", "at", "by",
    "after", "before", "into", "over", "during",
}  # fmt: skip
_WORD_AT = re.compile(r"\s+([A-Za-z]+)\b")


def speech_units(text: str) -> int:
    """A rough measure of speaking time: one per Latin character, three per Han character.

    (English is spoken at about 14 characters a second, Mandarin at about 4.5 characters.)
    """
    return sum(3 if is_han(ch) else 1 for ch in text if not ch.isspace())


def split_sentences(text: str, *, first_max_units: int = DEFAULT_FIRST_MAX_UNITS) -> list[str]:
    """The sentences of ``text`` in order, stripped, none empty; the text is kept verbatim.

    ``first_max_units`` bounds the first piece (in ``speech_units``) where a clause break
    allows; ``0`` disables that cut.
    """
    sentences: list[str] = []
    start = 0
    i = 0
    n = len(text)
    while i < n:
        end = _sentence_end(text, i)
        if end is None:
            i += 1
            continue
        piece = text[start:end].strip()
        if piece:
            sentences.append(piece)
        start = i = end
    tail = text[start:].strip()
    if tail:
        sentences.append(tail)
    if sentences and first_max_units > 0 and speech_units(sentences[0]) > first_max_units:
        pieces = _cut_first(sentences[0], first_max_units)
        longest = _SECOND_PIECE_FACTOR * first_max_units
        if len(pieces) == 2 and speech_units(pieces[1]) > longest:
            pieces[1:] = _cut_at_clause(pieces[1], longest)
        sentences[:1] = pieces
    return sentences


def ends_sentence(piece: str) -> bool:
    """Whether ``piece`` ends a sentence (a terminator, then perhaps closing quotes or brackets),
    rather than being the first part of one that ``split_sentences`` cut."""
    core = piece.rstrip().rstrip(_CLOSERS)
    return core != "" and core[-1] in _CJK_TERMINATORS + _LATIN_TERMINATORS + ".．"


def ends_clause(piece: str) -> bool:
    """Whether ``piece`` ends at punctuation (a sentence end or a clause break), where the
    voice pauses, rather than between two words."""
    core = piece.rstrip().rstrip(_CLOSERS)
    return ends_sentence(piece) or (core != "" and core[-1] in _CLAUSE_BREAKS_CJK + _CLAUSE_BREAKS_LATIN)


def _sentence_end(text: str, i: int) -> int | None:
    """If a sentence ends with the character at ``i``, the index just past it (and its closers)."""
    ch = text[i]
    if ch == "\n":
        return i + 1
    if ch in _CJK_TERMINATORS:
        return _after_closers(text, _after_run(text, i, _CJK_TERMINATORS + _LATIN_TERMINATORS))
    if ch in _LATIN_TERMINATORS:
        end = _after_closers(text, _after_run(text, i, _CJK_TERMINATORS + _LATIN_TERMINATORS))
        if not _free_after(text, end) or (ch != ";" and _lowercase_follows(text, end)):
            return None  # '"Really?" she asked.' goes on after the question
        return end
    if ch in ".．":
        run_end = _after_run(text, i, ".．!?")
        end = _after_closers(text, run_end)
        if not _free_after(text, end) or _lowercase_follows(text, end):
            return None  # "3.5", "example.com", "e.g" inside, '"ok." she said'
        if run_end - i == 1 and not _period_is_final(text, i, end):
            return None
        return end
    return None


def _after_run(text: str, i: int, chars: str) -> int:
    while i < len(text) and text[i] in chars:
        i += 1
    return i


def _after_closers(text: str, i: int) -> int:
    return _after_run(text, i, _CLOSERS)


def _free_after(text: str, i: int) -> bool:
    """A sentence may end before ``i``: the text ends, a space follows, or a Chinese character."""
    return i >= len(text) or text[i].isspace() or is_han(text[i])


def _lowercase_follows(text: str, i: int) -> bool:
    """English starts a sentence with a capital; a lowercase word after . ! ? continues it."""
    after = _next_word(text, i)
    return after.isascii() and after.islower()


def _next_word(text: str, i: int) -> str:
    rest = text[i:].lstrip()
    return rest[:1]


def _period_is_final(text: str, i: int, end: int) -> bool:
    """Whether the single period at ``i`` ends its sentence (abbreviations and initials do not)."""
    match = _WORD_BEFORE_DOT.search(text[:i])
    if match is None:
        return True  # after a digit, a bracket, a quote: "It costs 5." ends
    word = match.group(1).lower()
    after = _next_word(text, end)
    capital_follows = after.isupper() or (after != "" and is_han(after)) or after == ""
    if word in _NEVER_FINAL:
        return False
    if word in _BEFORE_NUMBER and after.isdigit():
        return False
    if len(word) == 1 and match.group(1).isupper():
        return False  # an initial: "J. Smith"
    if word in _MAYBE_FINAL or re.fullmatch(r"(?:[a-z]\.)+[a-z]", word):
        return capital_follows
    return True


def _cut_first(sentence: str, max_units: int) -> list[str]:
    """Cut the first sentence: at the clause break closest below ``max_units``; else before the
    phrase opener closest below it; else at whichever of the two comes first past it."""
    clause = _clause_cut(sentence, max_units)
    word = _word_cut(sentence, max_units)
    fits = [c for c in (clause, word) if c is not None and speech_units(sentence[:c]) <= max_units]
    best = fits[0] if fits else min((c for c in (clause, word) if c is not None), default=None)
    if best is None:
        return [sentence]
    return [sentence[:best].strip(), sentence[best:].strip()]


def _word_cut(sentence: str, max_units: int) -> int | None:
    """The index before the phrase opener that makes the first piece closest below ``max_units``
    (or the first one past it), leaving at least ``_MIN_PIECE_UNITS`` on each side."""
    openers = (m.start() for m in _WORD_AT.finditer(sentence) if m.group(1).lower() in _PHRASE_OPENERS)
    return _closest_cut(sentence, openers, max_units, lambda rest: speech_units(rest) >= _MIN_PIECE_UNITS)


def _closest_cut(
    sentence: str, cuts: Iterable[int], max_units: int, rest_ok: Callable[[str], bool]
) -> int | None:
    """Of the candidate ``cuts`` (ascending indices), the one whose first piece is closest below
    ``max_units`` units, or else the first past it; a cut must leave at least ``_MIN_PIECE_UNITS``
    before it and a rest that ``rest_ok`` accepts. ``None`` when no cut qualifies."""
    best: int | None = None
    for cut in cuts:
        units = speech_units(sentence[:cut])
        if units < _MIN_PIECE_UNITS or not rest_ok(sentence[cut:]):
            continue
        if units <= max_units or best is None:
            best = cut
        if units > max_units:
            break
    return best


def _cut_at_clause(sentence: str, max_units: int) -> list[str]:
    """Cut ``sentence`` once at ``_clause_cut``; unchanged when there is no clause break."""
    best = _clause_cut(sentence, max_units)
    if best is None:
        return [sentence]
    return [sentence[:best].strip(), sentence[best:].strip()]


def _clause_cut(sentence: str, max_units: int) -> int | None:
    """Cut ``sentence`` once at the clause break that makes the first piece closest below
    ``max_units`` (or the first break past it): the index just past it, ``None`` when there
    is none."""

    def breaks() -> Iterator[int]:
        for idx, ch in enumerate(sentence):
            cut = idx + 1
            if ch in _CLAUSE_BREAKS_CJK:
                yield cut
            elif ch in _CLAUSE_BREAKS_LATIN and (cut == len(sentence) or sentence[cut].isspace()):
                yield cut  # ", " is a clause break; "1,000" and "12:30" are not

    return _closest_cut(sentence, breaks(), max_units, lambda rest: bool(rest.strip()))
