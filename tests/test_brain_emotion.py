"""The per-turn frustration/anger score and complaint detection, in English and Chinese."""

from __future__ import annotations

import pytest

from avatar.brain.emotion import emotion_score, is_complaint


@pytest.mark.parametrize("text", ["How do I change my PIN?", "I lost my card", "我想查一下余额", "信用卡怎么还款", ""])
def test_calm_turns_score_zero(text: str) -> None:
    assert emotion_score(text) == 0.0


@pytest.mark.parametrize(
    "text",
    [
        "This is absolutely ridiculous, your service is useless!!",
        "I'm sick and tired of this stupid app",
        "WHY IS MY MONEY STILL NOT HERE?!?!",
        "气死我了，什么破银行！！",
        "你们简直就是骗子，太过分了",
        "说了多少遍了，到底怎么回事？？",
    ],
)
def test_angry_turns_score_high(text: str) -> None:
    assert emotion_score(text) >= 0.75


@pytest.mark.parametrize("text", ["I'm a bit frustrated with this", "这也太让人失望了", "I am annoyed that the transfer failed"])
def test_frustration_is_in_between(text: str) -> None:
    assert 0.3 <= emotion_score(text) < 0.75


def test_intensifiers_punctuation_and_negation() -> None:
    plain = emotion_score("this is frustrating")
    assert emotion_score("this is really frustrating") > plain
    assert emotion_score("this is frustrating!!!") > plain
    assert emotion_score("this is not frustrating at all") == 0.0
    assert emotion_score("我不生气") == 0.0
    assert emotion_score("我真生气") > emotion_score("我生气") > 0.0


def test_repeating_an_earlier_turn_raises_the_score() -> None:
    previous = ["Where is my refund?", "I want to know about my card"]
    assert emotion_score("where is my refund") == 0.0
    assert emotion_score("where is my refund", previous) >= 0.35
    assert emotion_score("我的退款到哪了", ["我的退款到哪了？"]) >= 0.35


def test_score_is_bounded() -> None:
    furious = "fucking useless idiots, you scammers, this is outrageous and disgusting!!!! " * 5
    assert 0.99 <= emotion_score(furious) <= 1.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("I want to make a complaint", True),
        ("How do I complain about a branch?", True),
        ("I'll report you to the ombudsman", True),
        ("我要投诉你们", True),
        ("我要向监管部门反映", True),
        ("How do I change my address?", False),
        ("怎么修改地址", False),
    ],
)
def test_complaints(text: str, expected: bool) -> None:
    assert is_complaint(text) is expected
