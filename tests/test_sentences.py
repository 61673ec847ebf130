"""Sentence splitting for streaming speech, language detection and word tokens."""

from __future__ import annotations

import pytest

from avatar.speech.lang import detect_lang, word_tokens
from avatar.speech.sentences import speech_units, split_sentences


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello there. How can I help you today?", ["Hello there.", "How can I help you today?"]),
        ("Wow! Really?! Yes; indeed.", ["Wow!", "Really?!", "Yes;", "indeed."]),
        ("Your rate is 3.5% this year.", ["Your rate is 3.5% this year."]),
        ("You owe $1,000.00 now. Pay soon.", ["You owe $1,000.00 now.", "Pay soon."]),
        ("Fees, e.g. wire fees, are waived. Thanks.", ["Fees, e.g. wire fees, are waived.", "Thanks."]),
        ("That is, i.e. the total. Done.", ["That is, i.e. the total.", "Done."]),
        ("Mr. Smith and Dr. Lee met J. Doe.", ["Mr. Smith and Dr. Lee met J. Doe."]),
        ("Visit branch No. 5 today.", ["Visit branch No. 5 today."]),
        ("We bank in the U.S. It is open.", ["We bank in the U.S.", "It is open."]),
        ("See example.com for details.", ["See example.com for details."]),
        ('"Is that all?" she asked. Yes.', ['"Is that all?" she asked.', "Yes."]),
        ("Wait... Then go.", ["Wait...", "Then go."]),
        ("First line\nSecond line", ["First line", "Second line"]),
        ("No terminator at all", ["No terminator at all"]),
        ("   ", []),
    ],
)
def test_english_sentences(text: str, expected: list[str]) -> None:
    assert split_sentences(text, first_max_units=0) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "你好，欢迎来到我们银行。请问有什么可以帮您？",
            ["你好，欢迎来到我们银行。", "请问有什么可以帮您？"],
        ),
        ("利率是3.5%！好的……再见；谢谢", ["利率是3.5%！", "好的……", "再见；", "谢谢"]),
        ("“您好。”他说。", ["“您好。”", "他说。"]),
        ("您的余额是1,000.00元。Thank you.", ["您的余额是1,000.00元。", "Thank you."]),
        ("Your balance is fine.谢谢！", ["Your balance is fine.", "谢谢！"]),
    ],
)
def test_chinese_and_mixed_sentences(text: str, expected: list[str]) -> None:
    assert split_sentences(text, first_max_units=0) == expected


def test_long_first_sentence_is_cut_at_a_clause_break_only_once() -> None:
    text = (
        "When you open a new savings account with us today, you will receive a welcome bonus "
        "of fifty dollars, and no monthly fee for the first year. Shall we start, then?"
    )
    sentences = split_sentences(text)
    assert sentences == [
        "When you open a new savings account with us today,",
        "you will receive a welcome bonus of fifty dollars, and no monthly fee for the first year.",
        "Shall we start, then?",
    ]
    assert speech_units(sentences[0]) <= 60


def test_long_chinese_first_sentence_is_cut_at_a_chinese_comma() -> None:
    text = "您好，感谢您致电我们银行的客户服务热线，为了保障您的账户安全，请您先提供您的姓名和身份证号码的后四位。"
    first, second = split_sentences(text)
    assert first == "您好，感谢您致电我们银行的客户服务热线，"
    assert first + second == text


def test_numbers_are_not_clause_breaks() -> None:
    text = "The transfer of 1,000,000 dollars to account 12345678 was completed at 12:30 yesterday afternoon."
    assert split_sentences(text, first_max_units=20) == [text]


def test_a_short_first_sentence_is_kept_whole() -> None:
    assert split_sentences("Hi, there. Bye.") == ["Hi, there.", "Bye."]


@pytest.mark.parametrize(
    ("text", "lang"),
    [
        ("How can I help you?", "en"),
        ("你好，请问有什么可以帮您？", "zh"),
        ("我的account余额是多少", "zh"),
        ("Please say 你好", "en"),
        ("12345", "en"),
        ("", "en"),
    ],
)
def test_detect_lang(text: str, lang: str) -> None:
    assert detect_lang(text) == lang


def test_detect_lang_default_for_text_without_letters() -> None:
    assert detect_lang("123 456", default="zh") == "zh"


def test_word_tokens_keep_amounts_and_split_han_characters() -> None:
    tokens = word_tokens("Hello, world! 3.5% of $1,000.00, e.g. 你好ATM卡。")
    assert [t.text for t in tokens] == [
        "Hello",
        "world",
        "3.5%",
        "of",
        "$1,000.00",
        "e.g.",
        "你",
        "好",
        "ATM",
        "卡",
    ]
    text = "Hello, world! 3.5% of $1,000.00, e.g. 你好ATM卡。"
    assert all(text[t.start : t.end] == t.text for t in tokens)
