"""The optional LLM rephraser against a local OpenAI-compatible endpoint: the good path, its
failures (HTTP error, timeout, garbage) and the hallucination check, which all fall back to the
knowledge-base answer."""

from __future__ import annotations

from pathlib import Path

import pytest

from avatar.brain import Brain, DialogueContext, LLMSettings
from avatar.brain.llm import Rephraser, check_grounded
from tests.fakes.llm_server import FakeLLMServer, Mode

FIXTURE_KB = Path(__file__).parent / "data" / "brain" / "kb"


@pytest.fixture(scope="module")
def plain_brain(tmp_path_factory: pytest.TempPathFactory) -> Brain:
    return Brain.load(FIXTURE_KB, tmp_path_factory.getbasetemp() / "brain-data")


def with_llm(brain: Brain, url: str, timeout: float = 5.0, api_key: str | None = None) -> Brain:
    """The same knowledge and models, with a rephraser (what ``Brain.load(..., llm=...)`` builds)."""
    return Brain(brain.kb, brain.model, LLMSettings(url=url, model="test-model", api_key=api_key, timeout=timeout))


async def test_good_rephrasing_is_used(plain_brain: Brain) -> None:
    async with FakeLLMServer("good", api_key="secret-key") as server:
        brain = with_llm(plain_brain, server.url, api_key="secret-key")
        reply = await brain.areply(DialogueContext(), "my card 4111 1111 1111 1111 is lost")
    answer = plain_brain.kb.entries["card_lost"].answer
    assert reply.rephrased and reply.topic == "card_lost"
    assert reply.text.endswith("Of course. " + answer)
    # The model saw the redacted customer text and the retrieved knowledge, nothing else.
    (request,) = server.requests
    assert request.model == "test-model" and request.authorization == "Bearer secret-key"
    assert request.user == f"CUSTOMER: my card [CARD] is lost\nKNOWLEDGE: {answer}"
    assert "4111" not in request.user + request.system
    assert "English" in request.system


async def test_risk_notice_is_added_after_the_rephrasing(plain_brain: Brain) -> None:
    async with FakeLLMServer("good") as server:
        brain = with_llm(plain_brain, server.url)
        reply = await brain.areply(DialogueContext(), "理财产品风险等级怎么分")
    assert reply.rephrased and reply.lang == "zh"
    assert reply.text.startswith("好的。理财产品按风险从低到高")
    assert reply.text.endswith("理财非存款，产品有风险，投资须谨慎。")
    assert "Simplified Chinese" in server.requests[0].system


async def test_small_talk_goes_through_the_model_too(plain_brain: Brain) -> None:
    async with FakeLLMServer("good") as server:
        brain = with_llm(plain_brain, server.url)
        reply = await brain.areply(DialogueContext(), "hello")
    assert reply.action == "smalltalk" and reply.rephrased
    assert reply.text == "Of course. Hello, I'm the bank's virtual assistant. How can I help you today?"


@pytest.mark.parametrize("mode", ["hallucinate_number", "hallucinate_product", "error", "bad_json"])
async def test_failures_and_hallucinations_fall_back_to_the_knowledge(plain_brain: Brain, mode: Mode) -> None:
    async with FakeLLMServer(mode) as server:
        brain = with_llm(plain_brain, server.url)
        reply = await brain.areply(DialogueContext(), "I lost my card")
    assert len(server.requests) == 1
    assert not reply.rephrased
    assert reply.text == plain_brain.kb.entries["card_lost"].answer


async def test_timeout_falls_back_to_the_knowledge(plain_brain: Brain) -> None:
    async with FakeLLMServer("hang") as server:
        brain = with_llm(plain_brain, server.url, timeout=0.3)
        sentences = [s async for s in brain.reply_stream(DialogueContext(), "I lost my card")]
    assert sentences[0] == "Freeze your card in the app straight away so nobody can use it."
    assert len(server.requests) == 1


def test_synchronous_reply_with_the_model(plain_brain: Brain) -> None:
    with FakeLLMServer("good").in_thread() as server:
        brain = with_llm(plain_brain, server.url)
        good = brain.reply(DialogueContext(), "How do I send money abroad?")
    assert good.rephrased and good.text.startswith("Of course. You can send money abroad")
    with FakeLLMServer("hallucinate_number").in_thread() as server:
        brain = with_llm(plain_brain, server.url)
        bad = brain.reply(DialogueContext(), "How do I send money abroad?")
    assert not bad.rephrased and bad.text == plain_brain.kb.entries["international_transfer"].answer


def test_unreachable_endpoint_falls_back() -> None:
    rephraser = Rephraser(LLMSettings(url="http://127.0.0.1:9/v1", model="m", timeout=0.5))
    assert rephraser.rephrase("hi", "Knowledge.", "en") is None


def test_endpoint_url_forms() -> None:
    assert LLMSettings(url="http://h:1/v1/", model="m").endpoint == "http://h:1/v1/chat/completions"
    assert LLMSettings(url="http://h:1/v1/chat/completions", model="m").endpoint == "http://h:1/v1/chat/completions"


KNOWLEDGE = (
    "You can send money abroad in the app under Transfers. The exchange rate and any fee are shown before you "
    "confirm. Most transfers arrive within two working days, and the daily limit is 5,000 euros."
)


@pytest.mark.parametrize(
    "output",
    [
        "Sure! Open Transfers in the app to send money abroad; you'll see the exchange rate and any fee first.",
        "Most transfers arrive within two working days. The daily limit is 5000 euros.",
        "Of course: in the app, under Transfers, you can send money abroad.",
    ],
)
def test_faithful_outputs_pass_the_check(output: str) -> None:
    assert check_grounded(output, KNOWLEDGE) is None


@pytest.mark.parametrize(
    ("output", "problem"),
    [
        ("Transfers cost 3 euros and arrive in two days.", "numbers not in the knowledge: 3"),
        ("The fee is only 0.5% of the amount.", "numbers not in the knowledge: 0.5"),
        ("Fees are a small percent of the amount.", "percentage not in the knowledge"),
        ("You can also use our Global Saver account for this.", "name not in the knowledge: Global"),
        ("See www.example-bank.com for details.", "web address not in the knowledge"),
        ("Please tell us your PIN so we can check.", "asks for a secret"),
        ("", "empty output"),
        ("Transfers are easy. " * 40, "much longer than the knowledge"),
    ],
)
def test_unfaithful_outputs_are_rejected(output: str, problem: str) -> None:
    result = check_grounded(output, KNOWLEDGE)
    assert result is not None and result.startswith(problem)


def test_chinese_outputs_are_checked() -> None:
    knowledge = "补办新卡需要支付工本费，具体以网点公示的收费标准为准。"
    assert check_grounded("好的，补办新卡要付工本费，具体看网点公示的收费标准。", knowledge) is None
    assert check_grounded("补办新卡收取工本费二十元。", knowledge) == "number not in the knowledge: 二十"
    assert check_grounded("补办新卡免费，还可以办理「金福卡」。", knowledge) == "product not in the knowledge: 金福卡"
    assert check_grounded("您还可以购买安心宝理财。", knowledge) is not None
