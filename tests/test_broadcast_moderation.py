"""Comment moderation: each rule in English and Chinese, the rate limit per user on a fake clock,
the repeat rules, and the order the rules are applied in."""

from __future__ import annotations

import pytest

from avatar.broadcast.moderation import MemoryModerationState, Moderator, abusive, personal_data, spammy


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def moderator(**kwargs: object) -> tuple[Clock, Moderator]:
    clock = Clock()
    return clock, Moderator(clock=clock, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text",
    [
        "you are an idiot", "What a fucking scam", "f.u.c.k this bank", "sh1t service", "Fuuuuck", "f*ck off",
        "STFU", "a$$hole", "kill yourself",
        "主播是傻逼", "傻 逼", "你妈的银行", "去死吧", "什么垃圾主播", "脑残客服", "草泥马",
    ],
)
async def test_abuse_in_both_languages(text: str) -> None:
    assert abusive(text) is not None
    _, mod = moderator()
    verdict = await mod.check("viewer", text)
    assert not verdict.accepted and verdict.reason == "abuse"
    assert verdict.to_dict() == {"queued": False, "reason": "abuse", "message": "abusive language"}


@pytest.mark.parametrize(
    "text",
    [
        "What is the annual fee?", "Is Scunthorpe branch open?", "I read Dickens", "spicy hotpot offers?",
        "classic card benefits", "Can I shut down my old account?", "信用卡年费是多少？", "怎么开通手机银行",
        "这个活动太棒了", "how do I assess my credit score",
    ],
)
async def test_ordinary_questions_pass(text: str) -> None:
    assert abusive(text) is None and spammy(text) is None and not personal_data(text)
    _, mod = moderator()
    assert (await mod.check("viewer", text)).accepted


@pytest.mark.parametrize(
    "text",
    [
        "call me on 13812345678", "my card is 4111 1111 1111 1111", "email me at li.wei@example.com",
        "my PIN is 4821", "call +44 20 7946 0958", "我的手机号13912345678", "验证码是 845120",
        "我的身份证号是11010519491231002X",
    ],
)
async def test_personal_data_in_both_languages(text: str) -> None:
    _, mod = moderator()
    verdict = await mod.check("viewer", text)
    assert not verdict.accepted and verdict.reason == "personal_data"


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ("great deals at www.cheap-loans.com", "link"),
        ("visit https://bit.ly/abc now", "link"),
        ("free money at loans.xyz", "link"),
        ("add me on telegram for tips", "contact"),
        ("加我微信领红包", "contact"),
        ("刷单兼职日结", "contact"),
        ("!!!!!!!!!!!!", "flood"),
        ("哈哈哈哈哈哈哈哈哈哈", "flood"),
        ("ab ab ab ab ab ab ab ab", "flood"),
    ],
)
async def test_spam(text: str, detail: str) -> None:
    _, mod = moderator()
    verdict = await mod.check("viewer", text)
    assert not verdict.accepted and verdict.reason == "spam" and verdict.detail == detail


async def test_user_name_is_moderated_too() -> None:
    _, mod = moderator()
    abuse = await mod.check("idiot banker", "hello")
    assert abuse.reason == "abuse" and abuse.detail == "user"
    data = await mod.check("13812345678", "hello")
    assert data.reason == "personal_data" and data.detail == "user"


async def test_rate_limit_per_user_on_a_fake_clock() -> None:
    clock, mod = moderator(rate=3, per=60.0)
    for i in range(3):
        assert (await mod.check("li", f"question number {i}")).accepted
        clock.t += 1
    limited = await mod.check("li", "one more question")
    assert limited.reason == "rate_limited" and limited.retry_after == pytest.approx(57.0)
    assert limited.to_dict()["retry_after"] == 57.0
    # Another viewer is not affected.
    assert (await mod.check("wang", "my own question")).accepted
    # Once the window has passed, li may comment again.
    clock.t += 60
    assert (await mod.check("li", "back again with a question")).accepted


async def test_rejected_attempts_count_against_the_rate() -> None:
    clock, mod = moderator(rate=3, per=60.0)
    for _ in range(3):
        assert (await mod.check("spammer", "www.spam.com")).reason == "spam"
    assert (await mod.check("spammer", "an innocent question")).reason == "rate_limited"
    clock.t += 61
    assert (await mod.check("spammer", "an innocent question")).accepted


async def test_repeated_text_same_user_and_crowd() -> None:
    clock, mod = moderator(rate=100, repeat_window=600.0, crowd_repeat=3)
    assert (await mod.check("li", "When does the show end?")).accepted
    again = await mod.check("li", "when does the show END??")  # case, spacing and punctuation ignored
    assert again.reason == "repeated" and again.detail == "same user"
    # Copy-paste from many viewers: the third identical comment is refused.
    assert (await mod.check("a", "好看好看")).accepted
    assert (await mod.check("b", "好看 好看！")).accepted
    crowd = await mod.check("c", "好看好看")
    assert crowd.reason == "repeated" and crowd.detail == "many users"
    # After the window the same text is fresh again.
    clock.t += 601
    assert (await mod.check("li", "When does the show end?")).accepted


async def test_rate_limit_applies_before_content_rules() -> None:
    _, mod = moderator(rate=1, per=60.0)
    assert (await mod.check("x", "hello there")).accepted
    assert (await mod.check("x", "you idiot")).reason == "rate_limited"


async def test_memory_is_bounded() -> None:
    clock, mod = moderator(rate=5, max_users=50)
    for i in range(500):
        clock.t += 0.01
        await mod.check(f"user{i}", f"question {i} about cards")
    state = mod.state
    assert isinstance(state, MemoryModerationState)
    assert len(state._attempts) <= 50 and len(state._texts) <= 50
