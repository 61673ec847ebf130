"""The dialogue policy on a small fixture knowledge base (real topic models, learnt at load)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from avatar.brain import Brain, DialogueContext, Reply
from avatar.brain.policy import (
    aspect_of,
    choice_index,
    is_elliptical,
    smalltalk_kind,
    split_sentences,
    wants_human,
)

FIXTURE_KB = Path(__file__).parent / "data" / "brain" / "kb"


@pytest.fixture(scope="module")
def brain(tmp_path_factory: pytest.TempPathFactory) -> Brain:
    # One data directory for the whole run: later modules load the learnt model from its cache.
    return Brain.load(FIXTURE_KB, tmp_path_factory.getbasetemp() / "brain-data")


def converse(brain: Brain, *turns: str) -> list[Reply]:
    context = DialogueContext()
    return [brain.reply(context, turn) for turn in turns]


def test_answers_from_the_knowledge_base(brain: Brain) -> None:
    reply = converse(brain, "Help, I think I lost my card")[0]
    assert (reply.action, reply.topic, reply.reason, reply.lang) == ("answer", "card_lost", None, "en")
    assert reply.text == brain.kb.entries["card_lost"].answer
    assert reply.confidence >= 0.5
    assert reply.suggestions[0].topic == "card_lost"
    assert reply.suggestions[0].answer == brain.kb.entries["card_lost"].answer
    assert len(reply.suggestions) == 3
    assert reply.sentences == [
        "Freeze your card in the app straight away so nobody can use it.",
        "Then report it as lost in the app to cancel it and order a replacement.",
    ]
    zh = converse(brain, "我的银行卡不见了")[0]
    assert (zh.action, zh.topic, zh.lang) == ("answer", "zh_card_loss", "zh")


def test_greetings_thanks_and_goodbyes_in_both_languages(brain: Brain) -> None:
    replies = converse(brain, "Hello!", "thanks a lot", "bye", "您好", "谢谢", "再见")
    assert [r.action for r in replies] == ["smalltalk"] * 6
    assert [r.lang for r in replies] == ["en"] * 3 + ["zh"] * 3
    assert "How can I help" in replies[0].text and "有什么可以帮您" in replies[3].text
    assert "welcome" in replies[1].text and "不客气" in replies[4].text
    assert "Goodbye" in replies[2].text and "再见" in replies[5].text
    assert all(r.topic is None and not r.suggestions for r in replies)
    # A greeting with a question is a question.
    assert converse(brain, "Hi, I lost my card")[0].topic == "card_lost"


def test_follow_up_uses_the_previous_topic_in_english(brain: Brain) -> None:
    replies = converse(brain, "I lost my card", "and what does it cost?", "how long will that take?")
    assert [r.topic for r in replies] == ["card_lost"] * 3
    assert replies[1].text == "Your first replacement card each year is free of charge."
    assert replies[2].text == "A replacement card usually arrives within five working days."


def test_follow_up_uses_the_previous_topic_in_chinese(brain: Brain) -> None:
    replies = converse(brain, "银行卡丢了怎么办", "那手续费呢")
    assert replies[1].action == "answer" and replies[1].topic == "zh_card_loss"
    assert replies[1].text == "补办新卡需要支付工本费，具体以网点公示的收费标准为准。"


def test_follow_up_without_details_says_what_the_answer_says(brain: Brain) -> None:
    # international_transfer has no details; its answer mentions the fee and the timing.
    replies = converse(brain, "How do I send money abroad?", "and the fee?", "how long does it take?")
    assert replies[1].text == "The exchange rate and any fee are shown before you confirm."
    assert replies[2].text == "Most transfers arrive within two working days."
    # Nothing in the answer about the aspect: say so, then the answer (nothing invented).
    reply = converse(brain, "Is there a daily transfer limit?", "what about the fee?")[1]
    assert reply.topic == "transfer_limit"
    assert reply.text.startswith("I don't have separate information on the cost for that.")
    assert reply.text.endswith(brain.kb.entries["transfer_limit"].answer)


def test_a_new_question_is_not_taken_as_a_follow_up(brain: Brain) -> None:
    replies = converse(brain, "I lost my card", "Are your investment funds risky?")
    assert replies[1].topic == "fund_risk"


def test_clarify_names_the_close_topics_and_accepts_a_choice(brain: Brain) -> None:
    context = DialogueContext()
    reply = brain.reply(context, "银行卡丢了，还有怎么查余额")
    assert reply.action == "clarify" and reply.topic is None
    assert "银行卡丢了怎么办" in reply.text and "怎么查余额" in reply.text
    assert context.pending[:2] == ["zh_card_loss", "zh_balance"]
    chosen = brain.reply(context, "第二个")
    assert (chosen.action, chosen.topic) == ("answer", "zh_balance")
    assert context.pending == [] and context.failed_turns == 0
    english = DialogueContext()
    offered = brain.reply(english, "card fee or transfer limit")
    assert offered.action == "clarify" and offered.text.startswith("Just to be sure, which of these do you mean:")
    offered_topics = list(english.pending)
    assert {"card_lost", "transfer_limit"} <= set(offered_topics)
    assert brain.reply(english, "the second one").topic == offered_topics[1]


def test_out_of_scope_in_both_languages(brain: Brain) -> None:
    for text, lang in (("What's the weather like in Paris tomorrow?", "en"), ("今天天气怎么样", "zh")):
        reply = converse(brain, text)[0]
        assert (reply.action, reply.topic, reply.lang) == ("out_of_scope", None, lang)
    en = converse(brain, "Can you recommend a good pizza place?")[0]
    assert en.text == (
        "I'm sorry, I can only help with questions about our banking services, such as cards, transfers and investments."
    )


def test_handoff_when_the_customer_asks_for_a_person(brain: Brain) -> None:
    for text in ("I want to talk to a real person", "agent please", "转人工", "我要人工客服"):
        reply = converse(brain, text)[0]
        assert (reply.action, reply.reason) == ("handoff", "customer_request"), text


def test_asking_for_a_person_suggests_answers_for_the_earlier_question(brain: Brain) -> None:
    """The operator picking up sees answers to what the customer asked, not to "a person"."""
    lost, handoff = converse(brain, "Help, I think I lost my card", "I want to talk to a real person")
    assert lost.topic == "card_lost" and handoff.reason == "customer_request"
    assert handoff.suggestions and handoff.suggestions[0].topic == "card_lost"
    # Asked first thing, there is nothing to suggest rather than something unrelated.
    assert converse(brain, "I want to talk to a real person")[0].suggestions == []


def test_handoff_after_two_failed_turns_in_a_row(brain: Brain) -> None:
    context = DialogueContext()
    first = brain.reply(context, "Who won the football world cup?")
    assert first.action == "out_of_scope" and context.failed_turns == 1
    second = brain.reply(context, "Write me a poem about the sea")
    assert (second.action, second.reason) == ("handoff", "repeated_failure")
    # A successful turn in between resets the count.
    context = DialogueContext()
    brain.reply(context, "Who won the football world cup?")
    brain.reply(context, "I lost my card")
    assert context.failed_turns == 0
    assert brain.reply(context, "Write me a poem about the sea").action == "out_of_scope"


def test_handoff_on_anger_and_on_complaints(brain: Brain) -> None:
    angry = converse(brain, "This is absolutely ridiculous, your app is useless!!")[0]
    assert (angry.action, angry.reason) == ("handoff", "negative_emotion") and angry.emotion >= 0.75
    angry_zh = converse(brain, "气死我了，什么破银行！！")[0]
    assert (angry_zh.action, angry_zh.reason) == ("handoff", "negative_emotion")
    # Two annoyed turns in a row are enough.
    replies = converse(brain, "I am really annoyed, my card is lost", "this is so frustrating")
    assert replies[0].action == "answer" and 0.5 <= replies[0].emotion < 0.75
    assert (replies[1].action, replies[1].reason) == ("handoff", "negative_emotion")
    complaint = converse(brain, "I want to make a complaint about your branch")[0]
    assert (complaint.action, complaint.reason) == ("handoff", "complaint")
    zh = converse(brain, "我要投诉")[0]
    assert (zh.action, zh.reason, zh.topic) == ("handoff", "complaint", "zh_complaint")
    assert zh.text == brain.kb.entries["zh_complaint"].answer
    assert zh.suggestions  # the operator sees the closest knowledge


def test_handoff_for_flagged_topics(brain: Brain) -> None:
    reply = converse(brain, "someone took money with my card and it wasn't me")[0]
    assert (reply.action, reply.topic, reply.reason) == ("handoff", "card_fraud", "topic_flagged")
    assert reply.text == brain.kb.entries["card_fraud"].answer


def test_investment_answers_carry_the_risk_notice(brain: Brain) -> None:
    reply = converse(brain, "Is putting money in a fund safe?")[0]
    assert reply.topic == "fund_risk"
    assert reply.text == (
        "Funds invest in markets, so their value changes every day. "
        "Investments can go down as well as up, and you may get back less than you invested."
    )
    zh = converse(brain, "R1到R5是什么意思")[0]
    assert zh.topic == "zh_wealth_risk" and zh.text.endswith("理财非存款，产品有风险，投资须谨慎。")
    plain = converse(brain, "I lost my card")[0]
    assert "Investments" not in plain.text


def test_secrets_are_never_repeated_and_history_is_redacted(brain: Brain) -> None:
    context = DialogueContext()
    reply = brain.reply(context, "my card 4111 1111 1111 1111 is lost and my PIN is 4821")
    assert reply.topic == "card_lost"
    assert reply.text.startswith("For your security, please never share passwords")
    assert "4821" not in reply.text and "4111" not in reply.text
    assert "4821" not in json.dumps(reply.to_dict())
    customer = context.customer_turns()[-1]
    assert customer == "my card [CARD] is lost and my PIN is [SECRET]"
    zh = brain.reply(DialogueContext(), "验证码是845120，我的卡丢了")
    assert zh.text.startswith("为了您的资金安全") and "845120" not in zh.text


def test_reply_to_dict_is_json(brain: Brain) -> None:
    data = json.loads(json.dumps(converse(brain, "I lost my card")[0].to_dict()))
    assert set(data) == {
        "action", "topic", "confidence", "text", "emotion", "reason", "suggestions", "lang", "rephrased"
    }
    assert set(data["suggestions"][0]) == {"topic", "question", "answer", "score"}


async def test_reply_stream_yields_sentences_and_keeps_the_reply(brain: Brain) -> None:
    context = DialogueContext()
    stream = brain.reply_stream(context, "I lost my card")
    first = await stream.__anext__()
    assert first == "Freeze your card in the app straight away so nobody can use it."
    assert context.last_reply is not None and context.last_reply.topic == "card_lost"
    rest = [sentence async for sentence in stream]
    assert rest == ["Then report it as lost in the app to cancel it and order a replacement."]


def test_empty_input_asks_again(brain: Brain) -> None:
    reply = converse(brain, "   ")[0]
    assert reply.action == "clarify" and reply.topic is None and "say it again" in reply.text


def test_conversations_are_independent_and_threads_share_the_brain(brain: Brain) -> None:
    a, b = DialogueContext(), DialogueContext()
    brain.reply(a, "I lost my card")
    brain.reply(b, "How do I send money abroad?")
    assert brain.reply(a, "and what does it cost?").topic == "card_lost"
    assert brain.reply(b, "and what does it cost?").topic == "international_transfer"
    texts = ["I lost my card", "Is there a daily transfer limit?", "怎么查余额", "Are your investment funds risky?"] * 4
    with ThreadPoolExecutor(4) as pool:
        topics = list(pool.map(lambda t: brain.reply(DialogueContext(), t).topic, texts))
    assert topics == ["card_lost", "transfer_limit", "zh_balance", "fund_risk"] * 4


def test_language_rules() -> None:
    assert wants_human("Can I speak to someone from customer service?")
    assert wants_human("connect me to an agent")
    assert wants_human("找人工") and wants_human("我要跟真人说")
    assert not wants_human("How do I change my PIN?") and not wants_human("工作人员说要收费")
    assert smalltalk_kind("Good morning!", "en") == "greeting"
    assert smalltalk_kind("thank you so much for your help", "en") == "thanks"
    assert smalltalk_kind("好的，谢谢你的帮助", "zh") == "thanks"
    assert smalltalk_kind("ok", "en") == "ack"
    assert smalltalk_kind("hello, my card was declined", "en") is None
    assert aspect_of("and what does it cost?") == "fee" and aspect_of("那手续费呢") == "fee"
    assert aspect_of("要多久") == "time" and aspect_of("需要带什么材料") == "requirements"
    assert aspect_of("额度是多少") == "limit" and aspect_of("在哪里办") == "channel"
    assert aspect_of("I lost my card") is None
    assert is_elliptical("and the fee?", "en") and is_elliptical("那手续费呢", "zh")
    assert not is_elliptical("What is the fee for sending money to Spain from my account?", "en")
    assert choice_index("the second one", 3) == 1 and choice_index("第一个", 2) == 0
    assert choice_index("3", 3) == 2 and choice_index("3", 2) is None and choice_index("the last one", 3) == 2
    assert choice_index("I lost my card", 3) is None
    assert split_sentences("Fees are 2.5% a year. See the app! 好的。谢谢？") == [
        "Fees are 2.5% a year.", "See the app!", "好的。", "谢谢？"
    ]
