"""Writing a benchmark's figures into BENCHMARKS.md: one section per benchmark, between
``<!-- bench:KEY -->`` and ``<!-- /bench:KEY -->``, every other section left as it is."""

from __future__ import annotations

import re
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def write_section(key: str, body: str, path: Path = BENCHMARKS) -> None:
    """Replace the ``key`` section of ``path`` (appended when absent; the file is created when missing)."""
    begin, end = f"<!-- bench:{key} -->", f"<!-- /bench:{key} -->"
    block = f"{begin}\n{body.strip()}\n{end}"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _m: block, text)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text, encoding="utf-8")
