"""Redaction of personal data and secrets, and recognising requests for secrets."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avatar.brain.compliance import asks_for_secret, cn_id_valid, luhn_valid, redact, shares_secret


def luhn_complete(prefix: str) -> str:
    """``prefix`` plus the check digit that makes it Luhn-valid."""
    for digit in "0123456789":
        if luhn_valid(prefix + digit):
            return prefix + digit
    raise AssertionError("unreachable")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("my card is 4111 1111 1111 1111 thanks", "my card is [CARD] thanks"),
        ("card 4111-1111-1111-1111.", "card [CARD]."),
        ("5500000000000004", "[CARD]"),
        ("银行卡号6222021234567890128丢了", "银行卡号[CARD]丢了"),
        ("amex 3782 822463 10005", "amex [CARD]"),
        # Not Luhn-valid but account-length: still sensitive.
        ("account 6222 0212 3456 7890 123", "account [ACCOUNT]"),
        # Short or non-Luhn numbers that are not account-like stay (amounts, order numbers).
        ("I paid 1500 euros on 2024-03-01", "I paid 1500 euros on 2024-03-01"),
        ("order 1234567890123", "order 1234567890123"),
        ("身份证号11010519491231002X", "身份证号[ID]"),
        ("ID 110105194912310021 is wrong", "ID [ACCOUNT] is wrong"),  # bad checksum: not an ID, but long digits
        ("call me on 13812345678", "call me on [PHONE]"),
        ("手机 138 1234 5678", "手机 [PHONE]"),
        ("+86 138-1234-5678", "[PHONE]"),
        ("my number is +44 20 7946 0958", "my number is [PHONE]"),
        ("US: (415) 555-2671", "US: [PHONE]"),
        ("write to jane.doe+bank@example.co.uk please", "write to [EMAIL] please"),
        ("my PIN is 4821", "my PIN is [SECRET]"),
        ("the verification code: 845120", "the verification code: [SECRET]"),
        ("验证码是845120", "验证码是[SECRET]"),
        ("密码：abc12345", "密码：[SECRET]"),
        ("I forgot my PIN", "I forgot my PIN"),
        ("I entered the wrong pin 3 times", "I entered the wrong pin 3 times"),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_checksums() -> None:
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert cn_id_valid("11010519491231002X") and cn_id_valid("11010519491231002x")
    assert not cn_id_valid("110105194912310021") and not cn_id_valid("1101051949123100")


@settings(max_examples=200, deadline=None)
@given(
    body=st.text(alphabet="0123456789", min_size=12, max_size=18),
    separator=st.sampled_from(["", " ", "-"]),
    before=st.text(alphabet=st.characters(blacklist_categories=("Nd", "Cs")), max_size=20),
    after=st.text(alphabet=st.characters(blacklist_categories=("Nd", "Cs")), max_size=20),
)
def test_no_card_number_survives_redaction(body: str, separator: str, before: str, after: str) -> None:
    number = luhn_complete(body)
    grouped = separator.join(number[i : i + 4] for i in range(0, len(number), 4))
    redacted = redact(f"{before} {grouped} {after}")
    assert number not in redacted.replace(" ", "").replace("-", "")
    # An 18-digit number can also be a valid Chinese ID number: redacted either way.
    assert "[CARD]" in redacted or ("[ID]" in redacted and len(number) == 18)


def test_shares_secret() -> None:
    assert shares_secret("my password is hunter22")
    assert shares_secret("验证码是 845120")
    assert shares_secret("card number 4111 1111 1111 1111")
    assert shares_secret("我的身份证11010519491231002X")
    assert not shares_secret("I forgot my password")
    assert not shares_secret("怎么修改密码")
    assert not shares_secret("I want to send 2000 pounds")


@pytest.mark.parametrize(
    "text",
    [
        "Please tell us your password so we can check.",
        "Could you give me the verification code we just sent?",
        "What is your PIN?",
        "Please provide your full card number.",
        "请您把收到的验证码告诉我们。",
        "请提供您的银行卡密码。",
        "麻烦您报一下身份证号。",
    ],
)
def test_asks_for_secret(text: str) -> None:
    assert asks_for_secret(text)


@pytest.mark.parametrize(
    "text",
    [
        "Never share your PIN or a code with anyone, including us.",
        "Enter your PIN at the cash machine to change it.",
        "You can reset your password in the app.",
        "请勿向任何人提供验证码。",
        "银行工作人员不会向您索要密码。",
        "请在手机银行中输入密码完成验证。",
    ],
)
def test_does_not_ask_for_secret(text: str) -> None:
    assert not asks_for_secret(text)
