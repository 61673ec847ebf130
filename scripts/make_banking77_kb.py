#!/usr/bin/env python3
"""Write the BANKING77 training utterances as a knowledge-base CSV.

The output (``assets/knowledge/en/banking77_train.csv`` by default) has the header
``id,question,answer``: one row per utterance of the BANKING77 *train* split, the
intent name as ``id``, the utterance copied unchanged as ``question`` and ``answer``
left empty, because each id also exists in ``assets/knowledge/en/banking77.yaml``,
which holds the answer; these rows only add question variants to those entries.

Only the train split is read. The test split is for measuring and must never reach
the knowledge base.

Usage (from the repository root)::

    .venv/bin/python scripts/make_banking77_kb.py [TRAIN_CSV] [--out OUT_CSV]

TRAIN_CSV defaults to ``../shared/datasets/banking77/train.csv`` relative to the
repository. The output is deterministic: rows keep the order of the input file.
Exit code 2 with one line on stderr for a missing or malformed input.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TRAIN = REPO_ROOT.parent / "shared" / "datasets" / "banking77" / "train.csv"
DEFAULT_OUT = REPO_ROOT / "assets" / "knowledge" / "en" / "banking77_train.csv"
INPUT_HEADER = ["text", "category"]
OUTPUT_HEADER = ["id", "question", "answer"]


class InputError(Exception):
    """The training file is missing or does not look like BANKING77's train.csv."""


def read_train_split(path: Path) -> list[tuple[str, str]]:
    """Return ``(category, text)`` pairs from a BANKING77 ``text,category`` CSV, in file order.

    Raises InputError naming the file and line when the file is missing, its header is
    not ``text,category``, or a row has an empty text or category.
    """
    if not path.is_file():
        raise InputError(f"{path}: no such file (pass the path to BANKING77's train.csv)")
    rows: list[tuple[str, str]] = []
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header != INPUT_HEADER:
            raise InputError(f"{path}: expected the header 'text,category', found {header!r}")
        for row in reader:
            if len(row) != 2 or not row[0].strip() or not row[1].strip():
                raise InputError(f"{path}:{reader.line_num}: expected a non-empty text and category")
            text, category = row
            rows.append((category, text))
    if not rows:
        raise InputError(f"{path}: no rows after the header")
    return rows


def write_kb_csv(rows: list[tuple[str, str]], out: Path) -> None:
    """Write ``id,question,answer`` rows with the answer empty; utterances are not altered."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="", encoding="utf-8") as f:
        # "\n" line ends keep the file diff-friendly; csv still quotes embedded newlines.
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(OUTPUT_HEADER)
        for category, text in rows:
            writer.writerow([category, text, ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("train_csv", nargs="?", type=Path, default=DEFAULT_TRAIN,
                        help=f"BANKING77 train split (default: {DEFAULT_TRAIN})")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output CSV (default: {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    try:
        rows = read_train_split(args.train_csv)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write_kb_csv(rows, args.out)
    intents = len({category for category, _ in rows})
    print(f"wrote {len(rows)} rows ({intents} intents) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
