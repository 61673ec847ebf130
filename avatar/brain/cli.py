"""``avatar brain``: ask the dialogue brain, chat with it, or measure it.

- ``avatar brain ask [--kb PATH] [--json] TEXT``: one reply (``--json``: the whole ``Reply``).
- ``avatar brain chat [--kb PATH]``: a conversation in the terminal (or from piped lines),
  context kept between turns.
- ``avatar brain eval [--kb PATH] --cases FILE.csv``: topic recognition on a cases file (header
  row; utterance in column 1, expected topic id in column 2). Prints the errors per topic and,
  as its last line, ``accuracy: 0.xxxx``.

The knowledge base defaults to the shipped one; models learnt from it are cached under
``--data-dir`` (default ``$AVATAR_DATA_DIR`` or ``./data``). The optional LLM rephraser is set
with ``--llm-url``/``--llm-model``/``--llm-key`` or ``AVATAR_LLM_URL``/``AVATAR_LLM_MODEL``/
``AVATAR_LLM_API_KEY``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from avatar.brain.brain import Brain


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser("brain", help="the dialogue brain: ask, chat, eval")
    commands = parser.add_subparsers(dest="brain_command", metavar="COMMAND")
    commands.required = True

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--kb", type=Path, help="knowledge base: a .yaml/.csv file or a folder (default: the shipped one)")
        p.add_argument("--data-dir", type=Path, help="where learnt models are cached (default: $AVATAR_DATA_DIR or ./data)")

    def llm_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--llm-url", help="OpenAI-compatible API base, e.g. http://localhost:11434/v1 (default: off)")
        p.add_argument("--llm-model", help="model name for the LLM endpoint")
        p.add_argument("--llm-key", help="API key for the LLM endpoint")

    ask = commands.add_parser("ask", help="one reply to TEXT")
    common(ask)
    llm_options(ask)
    ask.add_argument("--json", action="store_true", help="print the whole reply as one JSON object")
    ask.add_argument("text", nargs="+", metavar="TEXT", help="what the customer says")
    ask.set_defaults(func=run_ask)

    chat = commands.add_parser("chat", help="a conversation in the terminal (one customer turn per line)")
    common(chat)
    llm_options(chat)
    chat.add_argument("--json", action="store_true", help="print each reply as a JSON object")
    chat.set_defaults(func=run_chat)

    evaluate = commands.add_parser("eval", help="topic-recognition accuracy on a cases file")
    common(evaluate)
    evaluate.add_argument("--cases", type=Path, required=True, help="CSV: header row, then utterance,expected_topic")
    evaluate.add_argument("--errors", type=int, default=3, help="example errors shown per topic (default 3)")
    evaluate.set_defaults(func=run_eval)


def _data_dir(args: argparse.Namespace) -> Path:
    if args.data_dir is not None:
        return Path(args.data_dir)
    return Path(os.environ.get("AVATAR_DATA_DIR") or "data")


def _llm(args: argparse.Namespace) -> Any:
    from avatar.brain.llm import LLMSettings

    url = getattr(args, "llm_url", None) or os.environ.get("AVATAR_LLM_URL")
    if not url:
        return None
    model = getattr(args, "llm_model", None) or os.environ.get("AVATAR_LLM_MODEL")
    if not model:
        from avatar.cli import CliError

        raise CliError("--llm-url needs --llm-model (or AVATAR_LLM_MODEL)")
    key = getattr(args, "llm_key", None) or os.environ.get("AVATAR_LLM_API_KEY")
    return LLMSettings(url=url, model=model, api_key=key)


def _load(args: argparse.Namespace) -> Brain:
    from avatar.brain.brain import Brain, print_progress
    from avatar.brain.kb import KBError
    from avatar.cli import CliError

    try:
        return Brain.load(args.kb, _data_dir(args), _llm(args), progress=print_progress)
    except KBError as exc:
        for line in exc.errors[:-1]:
            print(line, file=sys.stderr)
        raise CliError(exc.errors[-1] if len(exc.errors) == 1 else f"{exc.errors[-1]} ({len(exc.errors)} errors)") from exc
    except OSError as exc:
        raise CliError(f"cannot use the data directory {_data_dir(args)}: {exc.strerror or exc}") from exc


def _show(reply: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(reply.to_dict(), ensure_ascii=False))
        return
    tag = reply.action + (f" ({reply.reason})" if reply.reason else "")
    topic = f" {reply.topic} {reply.confidence:.2f}" if reply.topic else ""
    print(f"[{tag}{topic} emotion {reply.emotion:.2f}] {reply.text}", flush=True)


def run_ask(args: argparse.Namespace) -> int:
    from avatar.brain.policy import DialogueContext

    brain = _load(args)
    _show(brain.reply(DialogueContext(), " ".join(args.text)), args.json)
    return 0


def run_chat(args: argparse.Namespace) -> int:
    from avatar.brain.policy import DialogueContext

    brain = _load(args)
    context = DialogueContext()
    interactive = sys.stdin.isatty()
    if interactive:
        print("Type what the customer says; an empty line or Ctrl-D ends the conversation.", file=sys.stderr)
    while True:
        if interactive:
            print("you> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line or (interactive and not line.strip()):
            return 0
        if not line.strip():
            continue
        _show(brain.reply(context, line.strip()), args.json)


def read_cases(path: Path) -> list[tuple[str, str]]:
    """``(utterance, expected topic)`` pairs of a cases file (header row first). Raises
    ``CliError`` naming the file (and line) when it cannot be used."""
    from avatar.cli import CliError

    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise CliError(f"{path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise CliError(f"{path}: not UTF-8 text") from exc
    reader = csv.reader(text.splitlines())
    cases = []
    try:
        header = next(reader, None)
        if header is None:
            raise CliError(f"{path}: empty file (expected a header row, then utterance,expected_topic)")
        for row in reader:
            if not row or not any(cell.strip() for cell in row):
                continue
            if len(row) < 2 or not row[0].strip() or not row[1].strip():
                raise CliError(f"{path}:{reader.line_num}: expected utterance,expected_topic")
            cases.append((row[0].strip(), row[1].strip()))
    except csv.Error as exc:
        raise CliError(f"{path}:{reader.line_num}: CSV error: {exc}") from exc
    if not cases:
        raise CliError(f"{path}: no cases after the header row")
    return cases


@dataclass
class Evaluation:
    """Topic recognition on a set of cases: top-1 accuracy and the errors by expected topic."""

    cases: int
    correct: int
    per_topic: Counter[str]
    errors: dict[str, list[tuple[str, str, float]]]  # expected -> (utterance, predicted, probability)
    seconds: float

    @property
    def accuracy(self) -> float:
        return self.correct / self.cases if self.cases else 0.0


def evaluate(brain: Brain, cases: Sequence[tuple[str, str]], progress: Callable[[int, int], None] | None = None) -> Evaluation:
    """Rank every utterance (batched per language) and compare the best topic with the expected one."""
    from avatar.brain.kb import detect_lang

    started = time.monotonic()
    by_lang: dict[str, list[int]] = defaultdict(list)
    for index, (text, _) in enumerate(cases):
        by_lang[detect_lang(text)].append(index)
    predictions: dict[int, tuple[str, float]] = {}
    done = 0
    for lang, indexes in by_lang.items():
        for start in range(0, len(indexes), 64):
            part = indexes[start : start + 64]
            for index, ranking in zip(part, brain.model.rank_many([cases[i][0] for i in part], lang), strict=True):
                predictions[index] = (ranking.topics[0], ranking.probabilities[0])
            done += len(part)
            if progress is not None:
                progress(done, len(cases))
    errors: dict[str, list[tuple[str, str, float]]] = defaultdict(list)
    correct = 0
    for index, (text, expected) in enumerate(cases):
        predicted, probability = predictions[index]
        if predicted == expected:
            correct += 1
        else:
            errors[expected].append((text, predicted, probability))
    per_topic = Counter(topic for _, topic in cases)
    return Evaluation(len(cases), correct, per_topic, dict(errors), time.monotonic() - started)


def run_eval(args: argparse.Namespace) -> int:
    from avatar.cli import CliError

    cases = read_cases(args.cases)
    brain = _load(args)
    unknown = sorted({topic for _, topic in cases if topic not in brain.kb.entries})
    if unknown:
        shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise CliError(f"{args.cases}: {len(unknown)} expected topics are not in the knowledge base: {shown}")

    def progress(done: int, total: int) -> None:
        sys.stderr.write(f"\r\x1b[Kevaluating {done}/{total}")
        sys.stderr.flush()

    result = evaluate(brain, cases, progress if sys.stderr.isatty() else None)
    if sys.stderr.isatty():
        sys.stderr.write("\n")
    for topic in sorted(result.errors, key=lambda t: (-len(result.errors[t]), t)):
        wrong = result.errors[topic]
        print(f"{topic}: {len(wrong)}/{result.per_topic[topic]} wrong")
        for text, predicted, probability in wrong[: args.errors]:
            print(f"    {text!r} -> {predicted} ({probability:.2f})")
    print(
        f"topics with errors: {len(result.errors)}/{len(result.per_topic)}; cases: {result.cases}; "
        f"time per utterance: {1000 * result.seconds / result.cases:.1f} ms (batched)"
    )
    print(f"accuracy: {result.accuracy:.4f}")
    return 0
