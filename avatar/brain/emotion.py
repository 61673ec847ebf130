"""Frustration and anger in a customer's turn, in English and Chinese.

``emotion_score(text, previous)`` is a number in [0, 1]: 0 calm, about 0.5 clearly annoyed,
0.75 and above angry (the policy hands over to a human there). It adds up evidence from a
lexicon of angry or frustrated words and phrases (negated ones do not count), intensifiers
next to them, shouting (runs of ``!``/``?``, capitals), and repetition of an earlier turn (a
customer who has to say the same thing again is losing patience), and squashes the sum with
``1 - exp(-x)``. ``is_complaint(text)`` recognises a formal complaint, which always goes to a person.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from difflib import SequenceMatcher

# Weight of each cue: roughly 0.5 for frustration, 0.8 for anger, 1.0 for abuse.
_EN_LEXICON: dict[str, float] = {
    "angry": 0.8, "furious": 1.0, "livid": 1.0, "mad": 0.5, "annoyed": 0.5, "annoying": 0.5,
    "frustrated": 0.6, "frustrating": 0.6, "irritated": 0.5, "upset": 0.5, "fed up": 0.8,
    "sick of": 0.8, "tired of": 0.5, "had enough": 0.8, "ridiculous": 0.8, "unacceptable": 0.8,
    "outrageous": 0.9, "disgraceful": 0.9, "disgusting": 0.9, "pathetic": 0.9, "useless": 0.8,
    "hopeless": 0.6, "terrible": 0.6, "awful": 0.6, "horrible": 0.6, "worst": 0.7, "rubbish": 0.7,
    "incompetent": 0.9, "joke": 0.4, "scam": 0.8, "scammers": 0.9, "rip off": 0.8, "ripoff": 0.8,
    "rip-off": 0.8, "thieves": 0.9, "stupid": 0.8, "idiot": 1.0, "idiots": 1.0, "moron": 1.0,
    "damn": 0.6, "dammit": 0.7, "hell": 0.4, "crap": 0.7, "shit": 1.0, "fuck": 1.2, "fucking": 1.2,
    "wtf": 1.0, "bloody": 0.5, "nonsense": 0.6, "waste of time": 0.8, "wasting my time": 0.8,
    "no one helps": 0.6, "nobody helps": 0.6, "not helpful": 0.5, "unhelpful": 0.5,
    "still waiting": 0.4, "still not": 0.3, "again and again": 0.6, "for the last time": 0.7,
    "how many times": 0.7, "sick and tired": 1.0, "hate": 0.7, "disappointed": 0.5,
}
_EN_INTENSIFIERS = ("very", "so", "really", "extremely", "totally", "absolutely", "completely", "utterly", "super")
_EN_NEGATIONS = ("not", "no", "never", "isn't", "wasn't", "don't", "didn't", "n't", "nothing")

_ZH_LEXICON: dict[str, float] = {
    "生气": 0.8, "气死": 1.0, "愤怒": 1.0, "火大": 0.9, "恼火": 0.8, "烦死": 0.8, "烦人": 0.6, "好烦": 0.6,
    "郁闷": 0.4, "失望": 0.5, "不满": 0.6, "无语": 0.6, "离谱": 0.8, "过分": 0.7, "太差": 0.8, "差劲": 0.8,
    "垃圾": 1.0, "破银行": 1.0, "什么破": 0.9, "骗子": 1.0, "坑人": 0.9, "坑我": 0.9, "黑心": 1.0,
    "忍无可忍": 1.0, "受够": 0.9, "搞什么": 0.8, "搞什么鬼": 1.0, "凭什么": 0.7, "不像话": 0.8,
    "耍我": 0.9, "忽悠": 0.8, "敷衍": 0.7, "欺负": 0.7, "恶心": 0.9, "混蛋": 1.0, "滚": 0.8, "妈的": 1.0,
    "他妈": 1.0, "靠": 0.4, "有病": 0.9, "脑子": 0.5, "没用": 0.6, "废物": 1.0, "浪费时间": 0.8,
    "到底怎么回事": 0.7, "怎么回事": 0.4, "还没到账": 0.3, "等了半天": 0.6, "等了好久": 0.5,
    "说了多少遍": 0.9, "说了几遍": 0.8, "一直不": 0.4, "又是": 0.3, "什么玩意": 0.9,
}
_ZH_INTENSIFIERS = ("太", "非常", "特别", "真", "简直", "极其", "实在", "超", "好", "真是")
_ZH_NEGATIONS = ("不", "没", "别", "并不", "没有")

_COMPLAINT_EN = re.compile(
    r"\b(complain(?:t|ts|ing)?|file a complaint|make a complaint|ombudsman|regulator|report you|sue you|lawyer)\b",
    re.IGNORECASE,
)
_COMPLAINT_ZH = re.compile(r"投诉|举报|12378|监管部门|银保监|金融监管|曝光你们|起诉")

_WORD_RE = re.compile(r"[a-z']+")


def _english_cues(text: str) -> float:
    low = text.lower()
    words = _WORD_RE.findall(low)
    joined = " " + " ".join(words) + " "
    total = 0.0
    for cue, weight in _EN_LEXICON.items():
        needle = f" {cue} "
        start = joined.find(needle)
        while start >= 0:
            before = joined[:start].split()[-3:]
            if not any(word in _EN_NEGATIONS or word.endswith("n't") for word in before):
                boost = 1.5 if any(word in _EN_INTENSIFIERS for word in before[-2:]) else 1.0
                total += weight * boost
            start = joined.find(needle, start + 1)
    # Shouting: several words in capitals ("THIS IS A JOKE").
    long_words = re.findall(r"[A-Za-z]{3,}", text)
    caps = [w for w in long_words if w.isupper()]
    if len(caps) >= 4 and len(caps) >= 0.6 * len(long_words):
        total += 0.7  # the whole turn is shouted
    elif len(caps) >= 2:
        total += 0.4
    return total


def _chinese_cues(text: str) -> float:
    total = 0.0
    covered = [False] * len(text)
    # Longest cues first, and each character counts once, so 搞什么鬼 is not also 搞什么.
    for cue, weight in sorted(_ZH_LEXICON.items(), key=lambda item: -len(item[0])):
        for match in re.finditer(re.escape(cue), text):
            if any(covered[match.start() : match.end()]):
                continue
            covered[match.start() : match.end()] = [True] * (match.end() - match.start())
            before = text[max(0, match.start() - 2) : match.start()]
            if any(before.endswith(neg) for neg in _ZH_NEGATIONS):
                continue
            boost = 1.5 if any(before.endswith(word) for word in _ZH_INTENSIFIERS) else 1.0
            total += weight * boost
    return total


def _punctuation(text: str) -> float:
    runs = re.findall(r"[!！?？]{2,}", text)
    if not runs:
        return 0.0
    longest = max(len(run) for run in runs)
    return 0.3 if longest < 3 else 0.5


def _repetition(text: str, previous: Sequence[str]) -> float:
    """0.5 when this turn repeats one of the customer's last three turns (nearly word for word)."""
    norm = re.sub(r"\W+", "", text.lower())
    if len(norm) < 4:
        return 0.0
    for earlier in list(previous)[-3:]:
        other = re.sub(r"\W+", "", earlier.lower())
        if other and SequenceMatcher(None, norm, other).ratio() >= 0.85:
            return 0.5
    return 0.0


def emotion_score(text: str, previous: Sequence[str] = ()) -> float:
    """Frustration/anger of ``text`` in [0, 1]; ``previous`` are the customer's earlier turns."""
    raw = _english_cues(text) + _chinese_cues(text) + _punctuation(text) + _repetition(text, previous)
    return round(1.0 - math.exp(-raw), 3)


def is_complaint(text: str) -> bool:
    """Whether the customer wants to make a formal complaint."""
    return bool(_COMPLAINT_EN.search(text) or _COMPLAINT_ZH.search(text))
