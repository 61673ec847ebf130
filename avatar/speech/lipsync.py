"""Lip-sync: phonemes -> visemes -> a smoothed mouth track on the chunk's own timeline.

Phoneme symbols are IPA as espeak-ng writes it, for English and Mandarin. Two producers
write them differently and both are handled:

* espeak-ng's PHONEME events give one phoneme per symbol, with a stress mark in front
  (``"ˈaʊ"``), Mandarin in espeak's own spelling (``"ts.h"`` for ʈʂʰ, ``"s."`` for ʂ,
  ``"o-"`` for ɤ, ``"i."``/``"i̪"`` for the apical vowels) and sometimes empty names.
* Piper's alignments give one *code point* per symbol, so stress marks (``"ˈ"``), length
  marks (``"ː"``), word spaces (``" "``) and punctuation arrive as symbols with durations
  of their own. Marks are folded into the phoneme they belong to; punctuation is a pause.

Tone digits (1-5), tone letters and, for Mandarin, espeak's ``ɜ`` tone mark are dropped: a
tone does not change the mouth.

Co-articulation follows Cohen and Massaro (1993): each viseme segment has a *dominance*
that peaks over its middle and decays before it (anticipation) and after it
(carry-over), separately for each mouth parameter; the mouth is the dominance-weighted
mean of the segment targets. So the lips round ahead of an "oo", the tongue of a "t"
barely moves the lips, and a 30 ms vowel between two consonants only half opens the jaw.
Averaging alone never quite closes the lips, so bilabials (PP) and labiodentals (FF) are
then pressed home over their own interval, with ramps that keep the motion continuous.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.ndimage import gaussian_filter1d

from avatar.face_state import REST_MOUTH, MouthShape
from avatar.timeline import SILENCE, Phoneme
from avatar.visemes import VISEME_SHAPES, Viseme

N_PARAMS = 7  # MouthShape fields, in order: open width round press tuck tongue teeth
_OPEN, _WIDTH, _ROUND, _PRESS, _TUCK, _TONGUE, _TEETH = range(N_PARAMS)


class MouthTrack:
    """Mouth parameters sampled at ``rate`` Hz over one chunk of speech.

    ``params[i]`` is the mouth at ``i / rate`` seconds, as a float32 row in ``MouthShape``
    field order (open, width, round, press, tuck, tongue, teeth). The track covers
    ``[0, duration]``; outside it the mouth is at rest. Lookups are O(1) and do not
    allocate arrays, so a renderer can call them once per frame from any thread.
    """

    __slots__ = ("duration", "params", "rate")

    def __init__(self, params: np.ndarray, rate: float, duration: float) -> None:
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"MouthTrack: rate must be a positive number of Hz, got {rate!r}")
        if not (duration >= 0 and math.isfinite(duration)):
            raise ValueError(f"MouthTrack: duration must be >= 0 seconds, got {duration!r}")
        arr = np.asarray(params, dtype=np.float32)
        if arr.ndim != 2 or arr.shape[1] != N_PARAMS or arr.shape[0] == 0:
            raise ValueError(f"MouthTrack: params must have shape (n >= 1, {N_PARAMS}), got {arr.shape}")
        self.rate = float(rate)
        self.params = arr
        self.duration = float(duration)

    @classmethod
    def rest(cls, duration: float, rate: float = 100.0) -> MouthTrack:
        """A track that holds the rest shape for ``duration`` seconds."""
        n = _sample_count(duration, rate)
        return cls(np.zeros((n, N_PARAMS), np.float32), rate, duration)

    def __len__(self) -> int:
        return int(self.params.shape[0])

    @property
    def times(self) -> np.ndarray:
        """The sample times in seconds, ``arange(len(self)) / rate``."""
        return np.arange(len(self), dtype=np.float64) / self.rate

    def _locate(self, t: float) -> tuple[int, float] | None:
        if not (0.0 <= t <= self.duration):  # also rejects NaN
            return None
        x = t * self.rate
        i = int(x)
        last = self.params.shape[0] - 1
        if i >= last:
            return last, 0.0
        return i, x - i

    def mouth_at(self, t: float) -> MouthShape:
        """The mouth at ``t`` seconds from the chunk start, linearly interpolated between
        samples; the rest shape before 0 and after ``duration``."""
        loc = self._locate(t)
        if loc is None:
            return REST_MOUTH
        i, frac = loc
        row = self.params[i]
        if frac == 0.0:
            return MouthShape(*row.tolist())
        a = row.tolist()
        b = self.params[i + 1].tolist()
        return MouthShape(*(x + (y - x) * frac for x, y in zip(a, b, strict=True)))

    def open_at(self, t: float) -> float:
        """Only the jaw opening at ``t`` (0 outside the track): for meters and A/V-offset checks."""
        loc = self._locate(t)
        if loc is None:
            return 0.0
        i, frac = loc
        a = float(self.params[i, _OPEN])
        if frac == 0.0:
            return a
        return a + (float(self.params[i + 1, _OPEN]) - a) * frac

    def params_at(self, times: np.ndarray) -> np.ndarray:
        """Vectorised ``mouth_at``: a float32 ``(len(times), 7)`` array, zero rows outside the track."""
        t = np.asarray(times, dtype=np.float64)
        x = np.clip(t * self.rate, 0.0, len(self) - 1)
        i = np.minimum(x.astype(np.int64), len(self) - 1)
        j = np.minimum(i + 1, len(self) - 1)
        frac = (x - i)[:, None]
        out = self.params[i] * (1.0 - frac) + self.params[j] * frac
        inside = (t >= 0.0) & (t <= self.duration)
        out[~inside] = 0.0
        return out.astype(np.float32, copy=False)


def _sample_count(duration: float, rate: float) -> int:
    """Samples at ``i / rate`` up to the first one at or after ``duration``."""
    if not (rate > 0 and math.isfinite(rate)):
        raise ValueError(f"rate must be a positive number of Hz, got {rate!r}")
    if not (duration >= 0 and math.isfinite(duration)):
        raise ValueError(f"duration must be >= 0 seconds, got {duration!r}")
    return math.ceil(duration * rate - 1e-9) + 1


# --------------------------------------------------------------------------------------
# Symbols -> visemes


def _is_chinese(lang: str) -> bool:
    low = lang.lower()
    return low.startswith(("zh", "cmn", "yue"))


# Multi-character units first (longest match wins), then single code points.
_UNITS: dict[str, Viseme] = {
    # affricates and espeak's ASCII spellings of Mandarin retroflexes
    "ts.": Viseme.CH,
    "dz.": Viseme.CH,
    "tʃ": Viseme.CH,
    "dʒ": Viseme.CH,
    "tɕ": Viseme.CH,
    "dʑ": Viseme.CH,
    "ʈʂ": Viseme.CH,
    "ɖʐ": Viseme.CH,
    "ts": Viseme.SS,
    "dz": Viseme.SS,
    "s.": Viseme.CH,
    "z.": Viseme.RR,
    "nɡ": Viseme.kk,
    "ng": Viseme.kk,
    # espeak's Mandarin vowels: ʅ (after zh ch sh r), ɿ (after z c s), ɤ
    "i.": Viseme.ih,
    "i[": Viseme.ih,
    "o-": Viseme.E,
    # r-coloured schwa: Mandarin "er" (espeak writes "ər")
    "ər": Viseme.RR,
    "əɹ": Viseme.RR,
}
_MAX_UNIT = max(len(u) for u in _UNITS)

_CHARS: dict[str, Viseme] = {}
for _vis, _chars in (
    (Viseme.PP, "pbmɓʙβɸ"),
    (Viseme.FF, "fvɱʋ"),
    (Viseme.TH, "θð"),
    (Viseme.DD, "tdɾʈɖɗɽ"),
    (Viseme.kk, "kgɡqɢŋxχɣhɦħʕʔɰcɟ"),
    (Viseme.CH, "ʃʒɕʑʂç"),
    (Viseme.SS, "sz"),
    (Viseme.nn, "nlɲɳɫɭʎʟɬɮɺ"),
    (Viseme.RR, "ɹrɻʀʁɚɝʐ"),
    (Viseme.aa, "aɑɐæʌɶ"),
    (Viseme.E, "eɛəɜɘɤ"),
    (Viseme.ih, "iɪɨɯj"),
    (Viseme.oh, "oɔɒøœɵɞ"),
    (Viseme.ou, "uʊʉyʏwɥʍ"),
):
    for _c in _chars:
        _CHARS[_c] = _vis
del _vis, _chars, _c

# espeak's ASCII phoneme mnemonics, which it falls back to where a phoneme has no IPA name.
_MNEMONICS: dict[str, str] = {
    "@": "ə",
    "A": "ɑ",
    "E": "ɛ",
    "O": "ɔ",
    "I": "ɪ",
    "U": "ʊ",
    "V": "ʌ",
    "N": "ŋ",
    "S": "ʃ",
    "Z": "ʒ",
    "T": "θ",
    "D": "ð",
    "Q": "ɒ",
    "R": "ɹ",
}

_VOWEL_CHARS = frozenset("aɑɐæʌɶeɛəɜɘɤiɪɨɯoɔɒøœɵɞuʊʉyʏ")
# Close vowels are glides when they share a symbol with another vowel (the i of "iɑ",
# the ɪ of "aɪ"): they get the shorter share of the symbol's time.
_CLOSE_VOWELS = frozenset("iɪɨɯuʊʉyʏ")
_STOPS = frozenset("pbtdkgɡcɟqʈɖ")  # an "h" after these (and affricates) is aspiration
_STRESS = {"ˈ": 1.12, "ˌ": 1.05}  # jaw opening multiplier for stressed vowels
_SUFFIX_MARKS = frozenset("ːˑ˘ʰʲʷˠˤʼ˞˥˦˧˨˩0123456789")  # length, secondary articulation, tone
_DROP = _SUFFIX_MARKS | frozenset("|‖‿.-")
_PAUSES = frozenset({"", SILENCE, "^", "$", "#"})
# A word space shorter than this is the join between two words, not a pause.
_WORD_JOIN_MAX_S = 0.12
# The glottals take the mouth shape of their neighbours.
_WEAK = frozenset("hɦʔ")

_LATIN_BASE: dict[str, Viseme] = {
    letter: Viseme(name)
    for letter, name in zip(
        "abcdefghijklmnopqrstuvwxyz",
        "aa PP kk DD E FF kk kk ih ih kk nn PP nn oh PP kk RR SS DD ou FF ou kk ou SS".split(),
        strict=True,
    )
}
_NAME_DESCRIPTORS = frozenset(
    "SMALL CAPITAL LETTER TURNED REVERSED CLOSED DOTLESS SCRIPT BARRED OPEN SIDEWAYS LONG "
    "INVERTED MODIFIER STRETCHED".split()
)


@dataclass(frozen=True, slots=True)
class _Parsed:
    """One symbol, understood: its visemes with time shares, or what kind of non-phoneme it is."""

    kind: str  # "speech", "pause", "join" (word space), "prefix" (stress) or "suffix" (length, tone)
    units: tuple[tuple[Viseme, float, float], ...] = ()  # (viseme, time share, dominance weight)
    stress: float = 1.0
    guessed: bool = False  # some letter was in no table and mapped by its Unicode name


def _fallback(ch: str) -> Viseme | None:
    """The viseme of a letter no table names, from its Unicode name's base Latin letter."""
    if not unicodedata.category(ch).startswith("L"):
        return None
    name = unicodedata.name(ch, "")
    if "LATIN" in name:
        for word in name.split()[2:]:
            if word in _NAME_DESCRIPTORS:
                continue
            if len(word) == 1 and word.lower() in _LATIN_BASE:
                return _LATIN_BASE[word.lower()]
            break
    # A letter from another script (a CJK character passed by mistake, say): a neutral
    # half-open speaking shape keeps the mouth moving with the voice.
    return Viseme.E


@lru_cache(maxsize=4096)  # a pure function of its arguments: caching is safe across threads
def _parse(symbol: str, chinese: bool) -> _Parsed:
    stripped = symbol.strip()
    if symbol and not stripped:
        return _Parsed("join")
    if stripped in _PAUSES:
        return _Parsed("pause")
    text = unicodedata.normalize("NFD", stripped)
    stress = 1.0
    for mark, gain in _STRESS.items():
        if mark in text:
            stress = max(stress, gain)
            text = text.replace(mark, "")
    had_suffix_mark = any(c in _SUFFIX_MARKS or unicodedata.combining(c) for c in text)
    if chinese and "ɜ" in text:
        text = text.replace("ɜ", "")  # espeak writes Mandarin tone marks with ɜ among the digits
        had_suffix_mark = True
    # Tie bars, syllabic, dental and nasal marks: none changes the viseme, and tie bars
    # would split affricates ("t͡ʃ") if left in.
    text = "".join(c for c in text if not unicodedata.combining(c))
    out: list[tuple[Viseme, bool, bool]] = []  # (viseme, is vowel, is close vowel)
    weak = False
    guessed = False
    i = 0
    while i < len(text):
        ch = text[i]
        unit = next(
            (
                text[i : i + n]
                for n in range(min(_MAX_UNIT, len(text) - i), 1, -1)
                if text[i : i + n] in _UNITS
            ),
            None,
        )
        if unit is not None:
            vis = _UNITS[unit]
            out.append((vis, vis.is_vowel, False))
            i += len(unit)
            if vis in (Viseme.CH, Viseme.SS) and text[i : i + 1] == "h":
                i += 1  # aspiration: espeak's Mandarin "tsh", "ts.h", "tɕh"
            continue
        if ch in _DROP:
            i += 1
            continue
        ch = _MNEMONICS.get(ch, ch)
        vis_opt = _CHARS.get(ch)
        if vis_opt is None:
            vis_opt = _fallback(ch)
            guessed = guessed or vis_opt is not None
            if vis_opt is None:
                i += 1
                continue
        if ch in _WEAK:
            weak = True
        out.append((vis_opt, ch in _VOWEL_CHARS, ch in _CLOSE_VOWELS))
        i += 1
        if ch in _STOPS and text[i : i + 1] == "h":
            i += 1  # aspiration: espeak's Mandarin "ph", "th", "kh"
    if not out:
        if stress > 1.0 and not had_suffix_mark:
            return _Parsed("prefix")
        return _Parsed("suffix" if had_suffix_mark else "pause")
    vowels = sum(1 for _, is_vowel, _ in out if is_vowel)
    shares = []
    for _vis, is_vowel, is_close in out:
        if is_vowel:
            shares.append(0.6 if is_close and vowels > 1 else 1.0)
        else:
            shares.append(0.6 if vowels else 1.0)
    total = sum(shares)
    dominance = 0.25 if weak and len(out) == 1 else 1.0
    units = tuple((vis, share / total, dominance) for (vis, _, _), share in zip(out, shares, strict=True))
    return _Parsed("speech", units, stress, guessed)


def viseme_for(symbol: str, lang: str = "en") -> Viseme:
    """The viseme of one phoneme symbol (IPA as espeak-ng writes it; tone digits allowed).

    For a diphthong or a symbol holding several sounds this is the main one (the vowel
    nucleus: ``"aɪ"`` -> aa, ``"iɑ"`` -> aa). Silence, pauses, punctuation and bare
    marks (stress, length, tone) give ``sil``. Never raises: an unknown letter maps by its
    base Latin letter, anything else to a neutral vowel shape.
    """
    parsed = _parse(symbol, _is_chinese(lang))
    if parsed.kind != "speech":
        return Viseme.sil
    best = max(parsed.units, key=lambda u: (u[1], u[0].is_vowel))
    return best[0]


@dataclass(frozen=True, slots=True)
class _Segment:
    viseme: Viseme
    start: float
    end: float
    stress: float = 1.0
    dominance: float = 1.0


def _segments(phonemes: Sequence[Phoneme], lang: str) -> list[_Segment]:
    """Phonemes -> viseme segments: marks folded into their phonemes, diphthongs split,
    equal neighbours merged. Segments tile the phonemes' time span in order."""
    chinese = _is_chinese(lang)
    ordered = sorted((p for p in phonemes if p.end > p.start), key=lambda p: p.start)
    parsed = [_parse(p.symbol, chinese) for p in ordered]

    # Attach marks: a stress mark's time goes to the next speech phoneme, a length or tone
    # mark's to the previous one; a short word space between two words is shared by them,
    # one next to a pause is part of the pause.
    starts = [p.start for p in ordered]
    ends = [p.end for p in ordered]
    stress = [q.stress for q in parsed]
    kinds = [q.kind for q in parsed]
    n = len(ordered)
    last_speech: int | None = None  # the speech phoneme the current symbol may belong to
    for k in range(n):
        kind = kinds[k]
        follows = last_speech is not None and abs(ends[last_speech] - starts[k]) < 1e-6
        leads = k + 1 < n and kinds[k + 1] in ("speech", "prefix") and abs(ends[k] - starts[k + 1]) < 1e-6
        if kind == "speech":
            last_speech = k
            continue
        if kind == "join" and follows and leads and ends[k] - starts[k] < _WORD_JOIN_MAX_S:
            assert last_speech is not None
            mid = 0.5 * (starts[k] + ends[k])
            ends[last_speech] = mid
            starts[k + 1] = mid
            kinds[k] = "absorbed"
        elif kind == "prefix" and leads:
            starts[k + 1] = starts[k]
            stress[k + 1] = max(stress[k + 1], stress[k])
            kinds[k] = "absorbed"
        elif kind in ("prefix", "suffix") and follows:
            assert last_speech is not None
            ends[last_speech] = ends[k]
            kinds[k] = "absorbed"
        elif kind == "suffix" and leads:
            starts[k + 1] = starts[k]
            kinds[k] = "absorbed"
        else:
            kinds[k] = "pause"
            last_speech = None

    segs: list[_Segment] = []
    for k in range(n):
        if kinds[k] == "absorbed":
            continue
        s, e = starts[k], ends[k]
        if kinds[k] == "pause":
            pieces = [_Segment(Viseme.sil, s, e)]
        else:
            pieces = []
            cursor = s
            units = parsed[k].units
            for j, (vis, share, dom) in enumerate(units):
                stop = e if j == len(units) - 1 else cursor + share * (e - s)
                pieces.append(_Segment(vis, cursor, stop, stress[k] if vis.is_vowel else 1.0, dom))
                cursor = stop
        for seg in pieces:
            if segs and segs[-1].viseme == seg.viseme and abs(segs[-1].end - seg.start) < 1e-6:
                last = segs[-1]
                segs[-1] = _Segment(
                    last.viseme,
                    last.start,
                    seg.end,
                    max(last.stress, seg.stress),
                    max(last.dominance, seg.dominance),
                )
            else:
                segs.append(seg)
    return segs


def visemes_of(phonemes: Sequence[Phoneme], lang: str = "en") -> list[tuple[Viseme, float, float]]:
    """The viseme timeline of ``phonemes``: ``(viseme, start, end)`` in time order.

    Stress, length and tone marks are folded into the phoneme they belong to, diphthongs
    and multi-sound symbols are split (the close-vowel glide gets the shorter part),
    punctuation and long word gaps become ``sil``, and equal neighbours are merged.
    """
    return [(s.viseme, s.start, s.end) for s in _segments(phonemes, lang)]


# --------------------------------------------------------------------------------------
# Co-articulation

_ORDER = list(Viseme)
_TARGETS = np.array([VISEME_SHAPES[v].as_tuple() for v in _ORDER], dtype=np.float64)

# Dominance of each viseme over each parameter (open width round press tuck tongue teeth).
# Why: lingual consonants (t d n l k s) leave the lips to their vowels, so their width and
# round dominance is low ("tea" is spread, "two" is rounded); the lips' own consonants and
# silence dominate strongly; the rounded sounds dominate rounding.
_DOMINANCE_BY_VISEME: dict[Viseme, tuple[float, ...]] = {
    Viseme.sil: (0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9),
    Viseme.PP: (2.0, 0.3, 0.3, 2.0, 1.0, 1.0, 1.5),
    Viseme.FF: (1.5, 0.4, 0.4, 1.0, 2.0, 1.0, 1.5),
    Viseme.TH: (0.8, 0.3, 0.3, 1.0, 1.0, 2.0, 1.0),
    Viseme.DD: (0.6, 0.3, 0.3, 1.0, 1.0, 1.5, 0.8),
    Viseme.kk: (0.5, 0.3, 0.3, 1.0, 1.0, 1.0, 0.6),
    Viseme.CH: (1.0, 0.9, 1.2, 1.0, 1.0, 1.0, 1.2),
    Viseme.SS: (1.0, 0.7, 0.4, 1.0, 1.0, 1.0, 1.3),
    Viseme.nn: (0.6, 0.3, 0.3, 1.0, 1.0, 1.5, 0.6),
    Viseme.RR: (0.7, 1.0, 1.0, 1.0, 1.0, 1.0, 0.6),
    Viseme.aa: (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0),
    Viseme.E: (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0),
    Viseme.ih: (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0),
    Viseme.oh: (1.0, 1.0, 1.3, 1.0, 1.0, 1.0, 1.0),
    Viseme.ou: (1.0, 1.2, 1.4, 1.0, 1.0, 1.0, 1.0),
}
_DOMINANCE = np.array([_DOMINANCE_BY_VISEME[v] for v in _ORDER], dtype=np.float64)
# Time constants (s) of the dominance fall-off before (anticipation) and after (carry-over)
# a segment: vowels reach further than consonants, as in the Cohen-Massaro fits.
_TAU_BEFORE = np.array([0.07 if v.is_vowel else 0.06 if v is Viseme.sil else 0.05 for v in _ORDER])
_TAU_AFTER = np.array([0.05 if v.is_vowel else 0.06 if v is Viseme.sil else 0.04 for v in _ORDER])
_PLATEAU_MARGIN_S = 0.03  # dominance is flat over a segment but this close to its ends
_NEIGHBOURS = 4  # segments each side that can still matter (dominance < 2 % further out)
_SMOOTH_SIGMA_S = 0.012  # final Gaussian smoothing: removes kinks, keeps 40 ms closures
_CLOSURE_RAMP_S = 0.05  # how long lips take to close onto / open off a bilabial
_EDGE_RAMP_S = 0.05  # from rest at the chunk start, back to rest at its end
_VIS_INDEX = {v: i for i, v in enumerate(_ORDER)}


def track_from_phonemes(
    phonemes: Sequence[Phoneme], duration: float, lang: str = "en", rate: float = 100.0
) -> MouthTrack:
    """The mouth track of one chunk from its phoneme timeline.

    ``phonemes`` should tile ``[0, duration]`` (``SpeechChunk.phonemes``); gaps are treated
    as silence and anything past ``duration`` is ignored. The track starts and ends at rest,
    holds every bilabial closed for at least one sample, relaxes to rest over pauses, and
    moves continuously in between. Cost is linear in ``duration * rate``.
    """
    n = _sample_count(duration, rate)
    segs = [s for s in _segments(phonemes, lang) if s.start < duration and s.end > 0.0]
    if n < 2 or not any(s.viseme is not Viseme.sil for s in segs):
        return MouthTrack.rest(duration, rate)

    # Rest segments on both sides so the mouth is pulled to rest at the chunk's edges.
    pad = 1.0
    starts = np.array([-pad] + [max(s.start, 0.0) for s in segs] + [duration], dtype=np.float64)
    ends = np.array([0.0] + [min(s.end, duration) for s in segs] + [duration + pad], dtype=np.float64)
    vis = np.array([0] + [_VIS_INDEX[s.viseme] for s in segs] + [0], dtype=np.int64)
    stress = np.array([1.0] + [s.stress for s in segs] + [1.0])
    weight = np.array([1.0] + [s.dominance for s in segs] + [1.0])

    targets = _TARGETS[vis].copy()
    targets[:, _OPEN] = np.minimum(targets[:, _OPEN] * stress, 1.0)
    alpha = _DOMINANCE[vis] * weight[:, None]
    margin = np.minimum(0.25 * (ends - starts), _PLATEAU_MARGIN_S)
    plateau_start = starts + margin
    plateau_end = ends - margin
    tau_before = _TAU_BEFORE[vis]
    tau_after = _TAU_AFTER[vis]

    t = np.arange(n, dtype=np.float64) / rate
    own = np.clip(np.searchsorted(starts, t, side="right") - 1, 0, len(starts) - 1)
    nbr = own[:, None] + np.arange(-_NEIGHBOURS, _NEIGHBOURS + 1)[None, :]
    valid = (nbr >= 0) & (nbr < len(starts))
    nbr = np.clip(nbr, 0, len(starts) - 1)
    before = (plateau_start[nbr] - t[:, None]) / tau_before[nbr]
    after = (t[:, None] - plateau_end[nbr]) / tau_after[nbr]
    x = np.maximum(np.maximum(before, after), 0.0)
    dom = np.exp(-(x * x)) * valid  # (n, 2K+1)
    w = dom[:, :, None] * alpha[nbr]  # (n, 2K+1, 7)
    params = np.einsum("nkp,nkp->np", w, targets[nbr]) / np.maximum(w.sum(axis=1), 1e-12)

    sigma = _SMOOTH_SIGMA_S * rate
    if sigma >= 0.3:
        params = gaussian_filter1d(params, sigma, axis=0, mode="nearest")

    _press_home(params, t, starts, ends, vis, rate)

    # Envelope: exactly rest at t=0 and from the last sample before ``duration`` on, so
    # interpolation at either end gives the rest shape.
    last = math.floor(duration * rate + 1e-9) / rate
    ramp = min(_EDGE_RAMP_S, 0.5 * last) if last > 0 else 0.0
    if ramp > 0:
        env = np.clip(np.minimum(t, last - t) / ramp, 0.0, 1.0)
        env = env * env * (3.0 - 2.0 * env)  # smoothstep: zero slope at rest
    else:
        env = np.zeros_like(t)
    params *= env[:, None]

    params[:, _OPEN] = np.clip(params[:, _OPEN], 0.0, 1.0)
    params[:, _WIDTH] = np.clip(params[:, _WIDTH], -1.0, 1.0)
    params[:, _ROUND:] = np.clip(params[:, _ROUND:], 0.0, 1.0)
    return MouthTrack(params.astype(np.float32), rate, duration)


def _press_home(
    params: np.ndarray, t: np.ndarray, starts: np.ndarray, ends: np.ndarray, vis: np.ndarray, rate: float
) -> None:
    """Close the lips fully on each bilabial and tuck the lip on each labiodental, in place.

    A weight ``w`` is 1 over the middle of the segment (at least one sample wide) and falls
    to 0 over ``_CLOSURE_RAMP_S`` on both sides with a raised cosine, so the extra motion
    is continuous; parameters are pulled toward the closure by ``w``.
    """
    half_sample = 0.5 / rate + 1e-9
    for k in np.flatnonzero((vis == _VIS_INDEX[Viseme.PP]) | (vis == _VIS_INDEX[Viseme.FF])):
        s, e = float(starts[k]), float(ends[k])
        mid = 0.5 * (s + e)
        hold = max(0.25 * (e - s), half_sample)
        lo = int(max(math.floor((mid - hold - _CLOSURE_RAMP_S) * rate), 0))
        hi = int(min(math.ceil((mid + hold + _CLOSURE_RAMP_S) * rate) + 1, len(t)))
        if lo >= hi:
            continue
        tt = t[lo:hi]
        dist = np.maximum(np.abs(tt - mid) - hold, 0.0) / _CLOSURE_RAMP_S
        w = np.where(dist < 1.0, 0.5 + 0.5 * np.cos(np.pi * np.minimum(dist, 1.0)), 0.0)
        seg = params[lo:hi]
        if vis[k] == _VIS_INDEX[Viseme.PP]:
            keep = (1.0 - w)[:, None]
            seg[:, _OPEN] *= keep[:, 0]
            seg[:, _PRESS] = seg[:, _PRESS] * keep[:, 0] + w
            seg[:, _TUCK:] *= keep  # tuck, tongue and teeth hide behind closed lips
        else:
            strength = 0.85 * w
            target = VISEME_SHAPES[Viseme.FF]
            seg[:, _TUCK] += (target.tuck - seg[:, _TUCK]) * strength
            seg[:, _OPEN] += (target.open - seg[:, _OPEN]) * strength
            seg[:, _TEETH] += (target.teeth - seg[:, _TEETH]) * strength
            seg[:, _PRESS] *= 1.0 - strength
