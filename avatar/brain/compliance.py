"""Compliance rules: what the brain never says, and what is never stored unredacted.

- ``redact(text)`` replaces card numbers (Luhn-valid, 13 to 19 digits, spaces or dashes allowed),
  other long account-like digit runs, Chinese resident ID numbers (18 characters with a valid
  checksum), phone numbers (mainland mobile and international), e-mail addresses, and passwords
  or codes a customer types after a keyword ("my PIN is 1234", "验证码是 845120"). Everything that
  is stored or logged goes through it.
- ``asks_for_secret(text)``: a knowledge-base answer or model output asking the customer for a
  password, code or full card/ID number; such answers are rejected at load time.
- ``shares_secret(text)``: the customer has just typed a secret; the reply then carries a
  security reminder (it never repeats what was typed).
"""

from __future__ import annotations

import re

_EMAIL_RE = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![\w-])")
_CN_ID_RE = re.compile(r"(?<![0-9A-Za-z])\d{17}[\dXx](?![0-9A-Za-z])")
# 13-19 digits, each optionally followed by one space or dash (card numbers are written in groups).
# Not after "+": "+86 138..." is a phone number.
_DIGIT_RUN_RE = re.compile(r"(?<![\d+])\d(?:[ -]?\d){12,18}(?![\d])")
_CN_MOBILE_RE = re.compile(r"(?<![\d+])(?:(?:\+|00)86[ -]?)?1[3-9]\d(?:[ -]?\d){8}(?![\d])")
_INTL_PHONE_RE = re.compile(r"(?<![\w+])(?:\+|00)[1-9]\d{0,2}(?:[ .-]?\(?\d{1,4}\)?){2,6}(?![\d])")
_NANP_PHONE_RE = re.compile(r"(?<![\d])\(?\d{3}\)?[ .-]\d{3}[ .-]\d{4}(?![\d])")
_SECRET_EN_RE = re.compile(
    r"\b(?P<key>password|passcode|passwd|pin(?: code| number)?|verification code|security code|one[- ]time (?:pass)?code|"
    r"otp|sms code|cvv2?|cvc|code)\b(?P<sep>\s*(?:is|was|=|:)?\s*)(?P<value>(?=[A-Za-z0-9!@#$%^&*._-]*\d)[A-Za-z0-9!@#$%^&*._-]{4,})",
    re.IGNORECASE,
)
_SECRET_ZH_RE = re.compile(
    r"(?P<key>密码|验证码|动态码|校验码|短信码|交易码|安全码|CVV2?|cvv2?)(?P<sep>\s*(?:是|为|[:：=])?\s*)"
    r"(?P<value>[A-Za-z0-9!@#$%^&*._-]{3,})"
)
_ASK_EN_RES = (
    re.compile(
        r"\b(?:tell|give|send|provide|share|read out|read|confirm|text)\s+(?:it\s+to\s+)?(?:us|me)\b[^.?!]{0,30}?"
        r"\b(?:password|passcode|pin|verification code|one[- ]time (?:pass)?code|otp|security code|cvv|cvc|"
        r"(?:full |whole |long )?card number|id number)",
        re.IGNORECASE,
    ),
    re.compile(
        r"\b(?:what is|what's|please (?:provide|share|send|tell us|tell me|give us|give me))\s+(?:us\s+|me\s+)?your\s+"
        r"(?:full\s+|whole\s+)?(?:password|passcode|pin|verification code|one[- ]time (?:pass)?code|otp|security code|"
        r"cvv|cvc|card number|id number)",
        re.IGNORECASE,
    ),
)
_SECRET_ZH = r"(?:密码|验证码|动态码|校验码|安全码|CVV|完整卡号|卡号|身份证号)"
_ASK_ZH_RES = (
    re.compile(
        r"(?:请|麻烦)您?(?:把|将)[^。！？；]{0,10}" + _SECRET_ZH + r"[^。！？；]{0,4}(?:告诉|提供给|发给|发送给|报给|告知|说给)(?:我们|我|客服|工作人员)"
    ),
    re.compile(r"(?:请|麻烦)您?(?:把|将)?[^。！？；]{0,12}(?:告诉|提供给|发给|发送给|报给|告知|说给)(?:我们|我|客服|工作人员)[^。！？；]{0,4}" + _SECRET_ZH),
    re.compile(r"(?:请|麻烦)您?(?:提供|告诉我们?|报一下|说一下|发一下|告知)(?:一下)?(?:您的)?[^。！？；，]{0,6}" + _SECRET_ZH),
)
_NOT_ASKING_ZH = re.compile(r"(?:不要|切勿|请勿|不会|绝不|从不|不得|勿)")

SECURITY_REMINDER = {
    "en": "For your security, please never share passwords, verification codes or full card numbers with anyone, "
    "including us.",
    "zh": "为了您的资金安全，请勿向任何人（包括客服）透露密码、验证码或完整卡号。",
}


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum of a digit string (card numbers satisfy it)."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if position % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def cn_id_valid(text: str) -> bool:
    """The ISO 7064 MOD 11-2 checksum of an 18-character Chinese resident ID number."""
    if len(text) != 18 or not text[:17].isdigit():
        return False
    total = sum(int(d) * w for d, w in zip(text[:17], _ID_WEIGHTS, strict=True))
    return "10X98765432"[total % 11] == text[17].upper()


def _digit_run(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group(0))
    if luhn_valid(digits):
        return "[CARD]"
    if len(digits) >= 16:
        return "[ACCOUNT]"  # a bank account number, or a mistyped card number: sensitive either way
    return match.group(0)


def _cn_id(match: re.Match[str]) -> str:
    return "[ID]" if cn_id_valid(match.group(0)) else match.group(0)


def _secret(match: re.Match[str]) -> str:
    return f"{match.group('key')}{match.group('sep')}[SECRET]"


def redact(text: str) -> str:
    """``text`` with personal and secret data replaced by ``[EMAIL]``, ``[ID]``, ``[CARD]``,
    ``[ACCOUNT]``, ``[PHONE]`` and ``[SECRET]``; everything else is unchanged."""
    text = _EMAIL_RE.sub("[EMAIL]", text)
    text = _CN_ID_RE.sub(_cn_id, text)
    text = _DIGIT_RUN_RE.sub(_digit_run, text)
    text = _CN_MOBILE_RE.sub("[PHONE]", text)
    text = _INTL_PHONE_RE.sub("[PHONE]", text)
    text = _NANP_PHONE_RE.sub("[PHONE]", text)
    text = _SECRET_ZH_RE.sub(_secret, text)
    return _SECRET_EN_RE.sub(_secret, text)


def shares_secret(text: str) -> bool:
    """Whether the customer's text holds a password or code after a keyword, or a full card or
    ID number (what a reminder never to share them is for)."""
    if _SECRET_EN_RE.search(text) or _SECRET_ZH_RE.search(text):
        return True
    return any(token in redact(text) for token in ("[CARD]", "[ID]", "[ACCOUNT]"))


def asks_for_secret(text: str) -> bool:
    """Whether ``text`` asks the customer to give a password, code or full card/ID number to
    the bank's agent. Telling the customer to *enter* a PIN at a cash machine, or never to share
    a code, is not asking for it."""
    if any(pattern.search(text) for pattern in _ASK_EN_RES):
        return True
    for pattern in _ASK_ZH_RES:
        for match in pattern.finditer(text):
            start = max(0, match.start() - 4)
            if not _NOT_ASKING_ZH.search(text[start : match.end()]):
                return True
    return False
