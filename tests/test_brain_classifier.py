"""Topic recognition: the numpy RBF-SVM, calibration, caching, and the shipped Chinese part."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.svm import SVC

from avatar.brain import Brain, DialogueContext, classifier
from avatar.brain.classifier import (
    EXIT_MAX_LOSS,
    EXIT_MIN_PROBABILITY,
    RBF_C,
    RBF_GAMMA,
    E5Embedder,
    Embedder,
    FloatArray,
    IntentModel,
    RbfSvm,
    TfidfBlock,
    _exit_threshold,
    _log_softmax,
    zh_words,
)
from avatar.brain.kb import default_kb_path


class CountingEmbedder:
    """A real e5 embedder, counting the texts it is asked to embed."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.name = inner.name
        self.embedded: list[str] = []

    def embed(self, texts: Sequence[str]) -> FloatArray:
        self.embedded.extend(texts)
        return self.inner.embed(texts)


@pytest.fixture(scope="module")
def e5() -> E5Embedder:
    return E5Embedder()


def test_numpy_rbf_svm_matches_scikit_learn() -> None:
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(5, 16))
    x = np.concatenate([c + 0.6 * rng.normal(size=(30, 16)) for c in centres]).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = np.repeat(np.arange(5), 30)
    ours = RbfSvm.fit(x, y, 5)
    reference = SVC(C=RBF_C, kernel="rbf", gamma=RBF_GAMMA, decision_function_shape="ovr").fit(x, y)
    probe = x[::7] + 0.05 * rng.normal(size=x[::7].shape).astype(np.float32)
    ours_scores = ours.scores(probe @ x.T, (probe**2).sum(1))
    np.testing.assert_allclose(ours_scores, reference.decision_function(probe), atol=1e-4)


@pytest.mark.parametrize(
    "options",
    [
        {"ngram_range": (1, 2)},
        {"analyzer": "char_wb", "ngram_range": (2, 5), "min_df": 2},
        {"analyzer": zh_words},
    ],
)
def test_lean_tfidf_transform_matches_scikit_learn(options: dict[str, object]) -> None:
    corpus = [
        "I lost my card", "My card was stolen yesterday", "How do I block my card?", "card card card",
        "银行卡丢了怎么办", "怎么挂失银行卡", "What's my balance?", "查询余额",
    ]
    vectorizer = TfidfVectorizer(sublinear_tf=True, dtype=np.float32, **options).fit(corpus)
    probes = ["I lost my card card", "block the card please", "nothing known here", "银行卡挂失", ""]
    ours = TfidfBlock(vectorizer).transform(probes).toarray()
    np.testing.assert_allclose(ours, vectorizer.transform(probes).toarray(), atol=1e-6)


def test_learning_is_cached_and_only_new_questions_are_embedded(tmp_path: Path, e5: E5Embedder) -> None:
    samples = [
        ("en", "card_lost", "I lost my card"),
        ("en", "card_lost", "My card was stolen"),
        ("en", "card_lost", "How do I block my card?"),
        ("en", "balance", "What is my balance?"),
        ("en", "balance", "How much money do I have?"),
        ("en", "balance", "Show me my account balance"),
        ("zh", "zh_balance", "怎么查余额"),
    ]
    first = CountingEmbedder(e5)
    model = IntentModel.build(samples, tmp_path, first)
    assert sorted(set(first.embedded) & {q for _, _, q in samples}) == sorted(q for _, _, q in samples)
    assert model.rank("I can't find my card", "en").topics[0] == "card_lost"
    # A Chinese knowledge base with one topic still answers it (and e5 is multilingual).
    assert model.rank("我的余额是多少", "zh").topics == ["zh_balance"]
    again = CountingEmbedder(e5)
    cached = IntentModel.build(samples, tmp_path, again)
    assert again.embedded == []  # nothing embedded, nothing learnt: loaded from the cache
    assert cached.rank("I can't find my card", "en").probabilities == pytest.approx(
        model.rank("I can't find my card", "en").probabilities
    )
    more = [*samples, ("en", "balance", "Tell me my balance please")]
    third = CountingEmbedder(e5)
    IntentModel.build(more, tmp_path, third)
    assert third.embedded == ["Tell me my balance please"]  # only the new question


def test_calibrated_probabilities_rank_and_sum_to_one(tmp_path_factory: pytest.TempPathFactory) -> None:
    brain = Brain.load(Path(__file__).parent / "data" / "brain" / "kb", tmp_path_factory.getbasetemp() / "brain-data")
    ranking = brain.rank("How can I wire money overseas?")
    assert ranking.topics[0] == "international_transfer"
    assert sum(ranking.probabilities) == pytest.approx(1.0, abs=1e-6)
    assert ranking.probabilities == sorted(ranking.probabilities, reverse=True)
    assert len(ranking.similarities) == len(ranking.topics)
    assert ranking.similarities[0] >= ranking.nearest_similarity - 0.2
    far = brain.rank("Write me a poem about the sea")
    assert far.anchor_similarity > far.nearest_similarity
    classifier = brain.model.classifiers["en"]
    assert 0.0 < classifier.final_temperature and all(t > 0 for t in classifier.temperatures)
    assert 0.5 < classifier.in_domain_similarity < 1.0


@pytest.mark.slow
def test_shipped_chinese_knowledge_base(tmp_path_factory: pytest.TempPathFactory) -> None:
    brain = Brain.load(default_kb_path() / "zh", tmp_path_factory.getbasetemp() / "brain-data-zh")
    context = DialogueContext()
    lost = brain.reply(context, "我的借记卡丢了，怎么办")
    assert (lost.action, lost.topic) == ("answer", "card_loss_report")
    fee = brain.reply(context, "那手续费呢")
    assert fee.topic == "card_loss_report" and fee.text == brain.kb.entries["card_loss_report"].details["fee"]
    wealth = brain.reply(DialogueContext(), "理财产品的风险等级是怎么划分的")
    assert wealth.topic == "wealth_risk_levels" and wealth.text.endswith(brain.kb.notice("zh", "risk") or "?")
    fraud = brain.reply(DialogueContext(), "我好像被骗了，钱已经转出去了")
    assert (fraud.action, fraud.reason) == ("handoff", "topic_flagged")
    assert brain.reply(DialogueContext(), "给我讲个笑话吧").action == "out_of_scope"


def test_exit_threshold_is_the_lowest_that_loses_little_accuracy() -> None:
    y = np.arange(1000) % 4
    lexical = np.zeros((1000, 4))
    confidence = np.linspace(10.0, 0.0, 1000)  # rows sorted by how sure the lexical view is
    lexical[np.arange(1000), y] = confidence
    # The lexical view is wrong on 1 in 10 of its less sure half; all the views never are.
    wrong = np.flatnonzero((np.arange(1000) >= 500) & (np.arange(1000) % 10 == 0))
    lexical[wrong, (y[wrong] + 1) % 4] = confidence[wrong] + 1.0
    fused = np.eye(4)[y] * 5.0
    threshold, rate = _exit_threshold(lexical, fused, y)
    probability = np.exp(_log_softmax(lexical).max(1))
    assert threshold is not None and threshold >= EXIT_MIN_PROBABILITY
    exited = probability >= threshold
    assert rate == pytest.approx(exited.mean())
    assert (lexical.argmax(1) != y)[exited].sum() <= EXIT_MAX_LOSS * len(y)
    assert exited[:500].all()  # every sure and right row exits
    # A lexical view wrong even where it is surest: at most the allowed loss exits (one row in
    # 1000), and with 100 rows not even one.
    wrong_everywhere = np.roll(lexical, 1, axis=1) * 3
    assert _exit_threshold(wrong_everywhere, fused, y)[1] <= EXIT_MAX_LOSS
    assert _exit_threshold(wrong_everywhere[:100], fused[:100], y[:100]) == (None, 0.0)


def test_early_exit_ranks_without_embedding(tmp_path_factory: pytest.TempPathFactory) -> None:
    brain = Brain.load(Path(__file__).parent / "data" / "brain" / "kb", tmp_path_factory.getbasetemp() / "brain-data")
    text = "How can I wire money overseas?"
    embedded = brain.rank(text)
    assert embedded.embedded
    counting = CountingEmbedder(brain.model.embedder)
    en = dataclasses.replace(brain.model.classifiers["en"], exit_threshold=0.0)  # every utterance exits
    model = dataclasses.replace(brain.model, embedder=counting, classifiers={**brain.model.classifiers, "en": en})
    quick = model.rank(text, "en")
    assert counting.embedded == [] and not quick.embedded
    assert quick.topics[0] == embedded.topics[0] and sum(quick.probabilities) == pytest.approx(1.0)
    # Another language's lexical view is no evidence: a Chinese utterance is still embedded.
    assert model.rank_many(["我想往国外汇款"], "zh")[0].embedded and counting.embedded == ["我想往国外汇款"]
    many = model.rank_many([text, "Write me a poem about the sea"], "en")
    assert many[0].probabilities == pytest.approx(quick.probabilities) and not many[1].embedded
    # The policy answers a sure early exit; it has no similarities to call it out of scope.
    fast = Brain(brain.kb, model)
    sure = "I want to transfer money to a bank in another country"  # a question of the topic, verbatim
    assert not fast.rank(sure).embedded and fast.rank(sure).probabilities[0] >= 0.5
    reply = fast.reply(DialogueContext(), sure)
    assert (reply.action, reply.topic) == ("answer", "international_transfer")


def test_training_key_changes_with_the_embedder_and_the_early_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    samples = [("en", "card_lost", "I lost my card"), ("en", "balance", "What is my balance?")]
    key = IntentModel.training_key(samples, "e5onnx1-x")
    assert key == IntentModel.training_key(list(samples), "e5onnx1-x")
    assert key != IntentModel.training_key(samples, "e5onnx2-x")  # new vectors: learn again
    monkeypatch.setattr(classifier, "EXIT_MAX_LOSS", classifier.EXIT_MAX_LOSS * 2)
    assert key != IntentModel.training_key(samples, "e5onnx1-x")  # another exit threshold: learn again
