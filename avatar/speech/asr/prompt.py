"""Domain prompts: banking vocabulary that biases Whisper towards the words customers use.

Whisper reads ``initial_prompt`` as if it were the transcript just before the utterance,
so a short glossary written as a sentence makes it prefer "account balance" over "count
balance". The decoder keeps at most 223 prompt tokens and a long prompt costs decoding
time on every utterance, so the prompt is cut to a token budget, estimated without the
model's tokenizer and erring high.

For Mandarin the prompt is written in simplified Chinese with full-width punctuation,
which also steers Whisper to simplified characters and punctuated output.
"""

from __future__ import annotations

from collections.abc import Iterable

# Whisper keeps the last n_text_ctx // 2 - 1 = 223 prompt tokens; stay well below it.
DEFAULT_MAX_TOKENS = 160

BANKING_WORDS: dict[str, tuple[str, ...]] = {
    "en": (
        "account balance",
        "debit card",
        "credit card",
        "top-up",
        "PIN",
        "transfer",
        "exchange rate",
        "overdraft",
        "direct debit",
        "standing order",
        "IBAN",
        "sort code",
        "statement",
        "contactless",
        "chargeback",
        "savings account",
        "mortgage",
        "loan",
        "interest rate",
        "mobile app",
        "activate",
        "block my card",
        "Apple Pay",
        "Google Pay",
    ),
    "zh": (
        "账户余额",
        "借记卡",
        "信用卡",
        "充值",
        "密码",
        "转账",
        "汇率",
        "透支",
        "自动扣款",
        "账单",
        "挂失",
        "激活",
        "储蓄账户",
        "贷款",
        "利率",
        "手机银行",
        "银行卡",
        "验证码",
        "手续费",
        "理财",
    ),
}

_LEAD = {"en": "Bank customer service call about ", "zh": "以下是普通话的银行客服对话，关于"}
_SEPARATOR = {"en": ", ", "zh": "、"}
_END = {"en": ".", "zh": "。"}


def estimate_tokens(text: str) -> int:
    """An upper estimate of Whisper's BPE token count for ``text``.

    CJK characters count three tokens (the most byte-level BPE can need for one), other
    text one token per three characters (English words average about four).
    """
    cjk = sum(
        1
        for ch in text
        if "\u3000" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff" or "\uff00" <= ch <= "\uffef"
    )
    other = len(text) - cjk
    return 3 * cjk + -(-other // 3)


def _lang_key(lang: str | None) -> str:
    code = (lang or "en").replace("_", "-").split("-")[0].lower()
    return "zh" if code == "zh" else "en"


def domain_prompt(
    words: Iterable[str] = (),
    lang: str | None = "en",
    max_tokens: int = DEFAULT_MAX_TOKENS,
) -> str:
    """Whisper ``initial_prompt`` from vocabulary ``words`` (knowledge-base terms first).

    Words are de-duplicated (case-insensitively, first spelling kept), blanks dropped, and
    the list is topped up with the built-in banking words of ``lang`` ("en" or "zh"; other
    languages get the English words). Words that would push the prompt past ``max_tokens``
    (estimated) are left out, so the most important ones (given first) survive. Returns ""
    when nothing fits.
    """
    key = _lang_key(lang)
    lead, sep, end = _LEAD[key], _SEPARATOR[key], _END[key]
    chosen: list[str] = []
    seen: set[str] = set()
    budget = max_tokens - estimate_tokens(lead + end)
    for word in [*words, *BANKING_WORDS[key]]:
        term = " ".join(str(word).split()).strip(" ,.;:、，。")
        if not term or term.casefold() in seen:
            continue
        cost = estimate_tokens((sep if chosen else "") + term)
        if cost > budget:
            continue  # a shorter later word may still fit
        chosen.append(term)
        seen.add(term.casefold())
        budget -= cost
    return f"{lead}{sep.join(chosen)}{end}" if chosen else ""
