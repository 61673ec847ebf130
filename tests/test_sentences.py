"""Sentence splitting for streaming speech, language detection and word tokens."""

from __future__ import annotations

import pytest

from avatar.speech.lang import detect_lang, word_tokens
from avatar.speech.sentences import (
    DEFAULT_FIRST_MAX_UNITS,
    ends_clause,
    ends_sentence,
    speech_units,
    split_sentences,
)


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
        # Lines that switch language between sentences: each sentence gets its own voice.
        ("Hello… 您好，我是玛丽亚。", ["Hello…", "您好，我是玛丽亚。"]),
        ("Hello, I'm Maria.您好，我是玛丽亚。", ["Hello, I'm Maria.", "您好，我是玛丽亚。"]),
        ("我是Maria. How can I help?", ["我是Maria.", "How can I help?"]),
        ("您的 Visa 卡已冻结。请打开 app 查看。", ["您的 Visa 卡已冻结。", "请打开 app 查看。"]),
    ],
)
def test_chinese_and_mixed_sentences(text: str, expected: list[str]) -> None:
    assert split_sentences(text, first_max_units=0) == expected


def test_long_first_sentence_is_cut_before_a_phrase_and_its_long_rest_at_a_clause() -> None:
    text = (
        "When you open a new savings account with us today, you will receive a welcome bonus "
        "of fifty dollars, and no monthly fee for the first year. Shall we start, then?"
    )
    sentences = split_sentences(text)
    # No clause break comes within 20 units: the first piece ends before "with" (the first
    # phrase opener past 20 units, before the comma after "today"). The rest is longer than
    # 4 x 20 units, so it is cut once more at a clause break; later sentences stay whole.
    assert sentences == [
        "When you open a new savings account",
        "with us today, you will receive a welcome bonus of fifty dollars,",
        "and no monthly fee for the first year.",
        "Shall we start, then?",
    ]
    assert " ".join(sentences) == text


def test_a_clause_break_is_preferred_when_it_fits() -> None:
    text = "For your security, please never share your card number with anyone, not even with us."
    assert split_sentences(text) == [
        "For your security,",
        "please never share your card number with anyone, not even with us.",
    ]


def test_without_a_clause_break_the_cut_comes_before_a_conjunction_or_preposition() -> None:
    text = "Our branches are open from nine in the morning until five in the afternoon."
    first, rest = split_sentences(text)
    assert (first, rest) == ("Our branches are open", "from nine in the morning until five in the afternoon.")
    assert speech_units(first) <= DEFAULT_FIRST_MAX_UNITS


def test_a_long_first_sentence_with_no_break_at_all_is_kept_whole() -> None:
    text = "Unfortunately the requested international payment amount exceeds the permitted maximum."
    assert split_sentences(text) == [text]


def test_pieces_are_never_shorter_than_a_few_words() -> None:
    # "Yes," alone and "of course." alone are too short to be worth a synthesis of their own.
    assert split_sentences("Yes, of course.") == ["Yes, of course."]
    assert split_sentences("Please wait and stay on the line for a moment.", first_max_units=8) == [
        "Please wait",
        "and stay on the line for a moment.",
    ]


def test_long_chinese_first_sentence_is_cut_at_a_chinese_comma() -> None:
    text = "您好，感谢您致电我们银行的客户服务热线，为了保障您的账户安全，请您先提供您的姓名和身份证号码的后四位。"
    pieces = split_sentences(text)
    assert pieces[0] == "您好，感谢您致电我们银行的客户服务热线，"
    assert "".join(pieces) == text


def test_numbers_are_not_clause_breaks() -> None:
    text = "The transfer of 1,000,000 dollars to account 12345678 was completed at 12:30 yesterday afternoon."
    pieces = split_sentences(text, first_max_units=20)
    assert " ".join(pieces) == text
    assert any("1,000,000" in p for p in pieces) and any("12:30" in p for p in pieces)
    assert split_sentences("It is 1,000,000 or 2,000,000 at 12:30 today.", first_max_units=15) == [
        "It is 1,000,000",
        "or 2,000,000 at 12:30 today.",
    ]


def test_which_pieces_end_a_sentence_or_a_clause() -> None:
    assert ends_sentence("Hello.") and ends_sentence('"Is that all?"') and ends_sentence("好的。")
    assert not ends_sentence("I can check your balance,") and not ends_sentence("Your transfer")
    assert ends_clause("I can check your balance,") and ends_clause("您好，") and ends_clause("Done.")
    assert not ends_clause("Your transfer has been submitted")


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
