"""Moderation of live comments before they reach a stage's queue.

A comment is ``(user, text)`` from a platform bridge. ``Moderator.check`` answers a
``Verdict``: accepted, or rejected with one ``reason`` (a stable code) and a message. The
rules, in the order they are applied:

- ``rate_limited``: more than ``rate`` comments from one user within ``per`` seconds (every
  attempt counts, accepted or not, so a flooding user is slowed down whatever they send).
- ``abuse``: insults and slurs in English or Chinese, in the text or in the user's name;
  separators, repeated letters and digit-for-letter spellings ("f.u.c.k", "sh1t", "傻 逼")
  do not hide them.
- ``personal_data``: card, ID, account and phone numbers, e-mail addresses and typed secrets
  (``avatar.brain.compliance``): a viewer never hears them read out on air.
- ``spam``: links, "add me on WeChat"-style contact solicitations, character floods.
- ``repeated``: the same text again from the same user within ``repeat_window`` seconds, or
  from ``crowd_repeat`` different users (copy-paste campaigns).

State (recent texts, attempt times) is per stage and bounded, behind ``ModerationState`` (memory
here, Redis when processes serve together); the clock is injectable so tests run without the
wall clock.
"""

from __future__ import annotations

import re
import time
import unicodedata
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from avatar.brain.compliance import redact, shares_secret

# -- the abuse lexicon ------------------------------------------------------------------------------
# English entries are matched on word starts after normalising (lower case, digits/symbols read
# as letters, letter runs collapsed), so "Fuuuck", "f*ck off" and "sh1t" are caught while
# "Scunthorpe" or "classic" are not. Collapsing runs turns "ass" into "as": entries are stored
# collapsed too.
_ABUSE_EN = (
    "fuck", "fck", "fuk", "motherfuck", "shit", "bullshit", "bitch", "bastard", "asshole", "arsehole",
    "dickhead", "dick", "cunt", "wanker", "twat", "prick", "slut", "whore", "retard", "moron", "idiot",
    "imbecile", "scumbag", "douche", "jackass", "dumbass", "piss off", "screw you", "shut up", "stfu",
    "kill yourself", "kys", "go die", "loser", "nigger", "nigga", "faggot", "fag", "chink", "spic",
)
_ABUSE_ZH = (
    "傻逼", "傻b", "傻屄", "煞笔", "沙比", "sb主播", "他妈的", "他妈", "妈的", "你妈", "尼玛", "草泥马", "操你", "肏", "日你",
    "滚蛋", "去死", "死全家", "白痴", "弱智", "脑残", "智障", "贱人", "婊子", "王八蛋", "混蛋", "狗日", "废物", "垃圾主播",
    "骗子银行", "傻瓜", "蠢货", "畜生", "杂种", "神经病",
)
# Stems that stay abusive with any ending ("fucking", "shitty"); every other entry must end a
# word, give or take a plural or verb ending ("idiots", not "Dickens" or "spicy").
_ABUSE_STEMS = frozenset({"fuck", "motherfuck", "shit", "bitch", "cunt", "whore", "slut", "retard", "wanker"})
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s"})
_SEPARATED_RE = re.compile(r"\b(?:[a-z][\s._\-*]){2,}[a-z]\b")  # "f.u.c.k", "s h i t"
_NON_HAN_GAP_RE = re.compile(r"(?<=[\u4e00-\u9fff])[\s\W_]+(?=[\u4e00-\u9fff])")


def _collapse_runs(text: str) -> str:
    return re.sub(r"(.)\1+", r"\1", text)


def _normalise_en(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower().translate(_LEET)
    text = _SEPARATED_RE.sub(lambda m: re.sub(r"[\s._\-*]", "", m.group(0)), text)
    return _collapse_runs(text)


def _en_pattern(words: tuple[str, ...]) -> re.Pattern[str]:
    parts = []
    for word in words:
        collapsed = _collapse_runs(word)
        # A masked letter ("f*ck", "sh#t") stands for any one letter.
        letters = [re.escape(c) if c != " " else r"\s+" for c in collapsed]
        body = "".join(f"(?:{c}|[*#%])" if c.isalpha() else c for c in letters)
        parts.append(body if word in _ABUSE_STEMS else body + r"(?:s|es|ed|ing|er|ers)?(?![a-z])")
    return re.compile(r"(?<![a-z])(?:" + "|".join(parts) + r")")


_ABUSE_EN_RE = _en_pattern(_ABUSE_EN)


def _normalise_zh(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    return _NON_HAN_GAP_RE.sub("", text)


def abusive(text: str) -> str | None:
    """The abusive word found in ``text`` (English or Chinese), or None."""
    match = _ABUSE_EN_RE.search(_normalise_en(text))
    if match:
        return match.group(0)
    zh = _normalise_zh(text)
    for word in _ABUSE_ZH:
        if word in zh:
            return word
    return None


# -- spam ----------------------------------------------------------------------------------------------
_LINK_RE = re.compile(
    r"(?:https?://|www\.|\b[a-z0-9-]+\.(?:com|net|org|cn|io|xyz|top|cc|me|ly|info|biz|shop|vip)\b)", re.IGNORECASE
)
_CONTACT_RE = re.compile(
    r"(?:\b(?:add|dm|message|contact|follow)\s+me\b|\b(?:whatsapp|telegram|wechat|line id|weixin)\b|"
    r"加(?:我)?(?:微信|薇信|v信|vx|qq|扣扣|好友)|\bvx\b|私聊|私信我|代开|刷单|兼职日结|免费领取|点击链接|扫码)",
    re.IGNORECASE,
)
_FLOOD_RUN = 8  # one character this many times in a row ("!!!!!!!!", "哈哈哈哈哈哈哈哈")


def spammy(text: str) -> str | None:
    """Why ``text`` looks like spam ("link", "contact", "flood"), or None."""
    if _LINK_RE.search(text):
        return "link"
    if _CONTACT_RE.search(text):
        return "contact"
    if re.search(rf"(.)\1{{{_FLOOD_RUN - 1},}}", text):
        return "flood"
    letters = [c for c in text if not c.isspace()]
    if len(letters) >= 12 and len(set(letters)) <= 2:
        return "flood"
    return None


def personal_data(text: str) -> bool:
    """Card, ID, account and phone numbers, e-mail addresses or a typed secret in ``text``."""
    return redact(text) != text or shares_secret(text)


def _fingerprint(text: str) -> str:
    """The text with case, spacing, punctuation and repeated characters ignored."""
    text = unicodedata.normalize("NFKC", text).lower()
    return _collapse_runs("".join(c for c in text if c.isalnum()))


# -- the moderator ---------------------------------------------------------------------------------------
REASONS = {
    "rate_limited": "too many comments from this user; try again later",
    "abuse": "abusive language",
    "personal_data": "the comment contains personal data (a card, ID, account or phone number, an e-mail "
    "address or a code)",
    "spam": "looks like spam",
    "repeated": "the same comment was sent already",
}


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    reason: str | None = None  # a key of REASONS when rejected
    detail: str | None = None  # e.g. which spam rule, or "user" when the name was the problem
    retry_after: float | None = None  # seconds, for rate_limited

    @property
    def message(self) -> str | None:
        if self.reason is None:
            return None
        text = REASONS[self.reason]
        return f"{text} ({self.detail})" if self.detail else text

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"queued": self.accepted}
        if not self.accepted:
            out["reason"] = self.reason
            out["message"] = self.message
            if self.retry_after is not None:
                out["retry_after"] = round(self.retry_after, 1)
        return out


ACCEPTED = Verdict(True)


class ModerationState(Protocol):
    """What moderation remembers of one stage: users' recent attempts and recent texts. In one
    process it is memory (``MemoryModerationState``); processes serving together keep it in
    Redis (``avatar.cluster.comments.RedisModerationState``) so the limits hold across them."""

    async def attempt(self, user: str, now: float, rate: int, per: float) -> float | None:
        """Count an attempt by ``user`` at ``now``: None when it is within ``rate`` per ``per``
        seconds, else the seconds to wait."""
        ...

    async def repeat(self, user: str, fingerprint: str, now: float, window: float, crowd: int) -> str | None:
        """Remember that ``user`` sent ``fingerprint`` at ``now``; "same user" when they sent it
        within ``window`` seconds already, "many users" when ``crowd`` users (them included)
        did, else None."""
        ...


class MemoryModerationState:
    """``ModerationState`` in this process's memory, bounded to ``max_users`` users and texts."""

    def __init__(self, max_users: int = 10_000) -> None:
        self.max_users = max_users
        self._attempts: OrderedDict[str, deque[float]] = OrderedDict()  # user -> attempt times
        self._texts: OrderedDict[str, deque[tuple[float, str]]] = OrderedDict()  # fingerprint -> (at, user)

    async def attempt(self, user: str, now: float, rate: int, per: float) -> float | None:
        times = self._attempts.pop(user, None) or deque()
        while times and times[0] <= now - per:
            times.popleft()
        self._attempts[user] = times  # most recently active last
        while len(self._attempts) > self.max_users:
            self._attempts.popitem(last=False)
        if len(times) >= rate:
            times.append(now)
            while len(times) > rate * 4:  # a flood must not grow memory
                times.popleft()
            return max(0.0, times[-rate - 1] + per - now) if len(times) > rate else per
        times.append(now)
        return None

    async def repeat(self, user: str, fingerprint: str, now: float, window: float, crowd: int) -> str | None:
        seen = self._texts.pop(fingerprint, None) or deque()
        while seen and seen[0][0] <= now - window:
            seen.popleft()
        users = {u for _, u in seen}
        verdict = None
        if user in users:
            verdict = "same user"
        elif len(users) + 1 >= crowd:
            verdict = "many users"
        seen.append((now, user))
        while len(seen) > crowd * 4:
            seen.popleft()
        self._texts[fingerprint] = seen
        while len(self._texts) > self.max_users:
            self._texts.popitem(last=False)
        return verdict


class Moderator:
    """The moderation filter of one stage. Its state is in memory unless ``state`` says
    otherwise (then ``clock`` must be one every process shares: the wall clock)."""

    def __init__(
        self,
        *,
        rate: int = 3,
        per: float = 60.0,
        repeat_window: float = 600.0,
        crowd_repeat: int = 3,
        max_users: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        state: ModerationState | None = None,
    ) -> None:
        self.rate = rate
        self.per = per
        self.repeat_window = repeat_window
        self.crowd_repeat = crowd_repeat
        self.max_users = max_users
        self.clock = clock
        self.state: ModerationState = state or MemoryModerationState(max_users)

    async def check(self, user: str, text: str) -> Verdict:
        """Decide on one comment; an accepted one is remembered for the repeat rule. A shared
        state that cannot be reached raises its error (``QueueUnavailable`` for Redis)."""
        now = self.clock()
        key = user.strip().casefold()
        wait = await self.state.attempt(key, now, self.rate, self.per)
        if wait is not None:
            return Verdict(False, "rate_limited", retry_after=wait)
        word = abusive(user)
        if word is not None:
            return Verdict(False, "abuse", "user")
        if abusive(text) is not None:
            return Verdict(False, "abuse")
        if personal_data(user):
            return Verdict(False, "personal_data", "user")
        if personal_data(text):
            return Verdict(False, "personal_data")
        spam = spammy(text) or ("link" if _LINK_RE.search(user) else None)
        if spam is not None:
            return Verdict(False, "spam", spam)
        fingerprint = _fingerprint(text)
        if fingerprint:
            repeat = await self.state.repeat(key, fingerprint, now, self.repeat_window, self.crowd_repeat)
            if repeat is not None:
                return Verdict(False, "repeated", repeat)
        return ACCEPTED
