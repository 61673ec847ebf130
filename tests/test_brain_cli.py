"""``avatar brain ask | chat | eval`` through the real command-line entry point."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from avatar.cli import main

DATA = Path(__file__).parent / "data" / "brain"
FIXTURE_KB = DATA / "kb"


@pytest.fixture
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Shared with the other brain tests: the fixture knowledge base is learnt once per run.
    return tmp_path_factory.getbasetemp() / "brain-data"


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_ask_json(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        ["brain", "ask", "--kb", str(FIXTURE_KB), "--data-dir", str(data_dir), "--json", "I", "lost", "my", "card"], capsys
    )
    assert code == 0
    (line,) = out.splitlines()
    reply = json.loads(line)
    assert reply["action"] == "answer" and reply["topic"] == "card_lost" and reply["lang"] == "en"
    assert reply["text"].startswith("Freeze your card") and reply["reason"] is None
    assert 0.5 <= reply["confidence"] <= 1.0 and reply["emotion"] == 0.0
    assert reply["suggestions"][0]["topic"] == "card_lost"


def test_ask_text(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["brain", "ask", "--kb", str(FIXTURE_KB), "--data-dir", str(data_dir), "转人工"], capsys)
    assert code == 0
    assert out.startswith("[handoff (customer_request) emotion 0.00] 好的，正在为您转接人工客服")


def test_chat_keeps_context_with_piped_input(
    data_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\nI lost my card\n\nand what does it cost?\n银行卡丢了怎么办\n那手续费呢\n"))
    code, out, _ = run(["brain", "chat", "--kb", str(FIXTURE_KB), "--data-dir", str(data_dir), "--json"], capsys)
    assert code == 0
    replies = [json.loads(line) for line in out.splitlines()]
    assert [r["action"] for r in replies] == ["smalltalk", "answer", "answer", "answer", "answer"]
    assert replies[2]["text"] == "Your first replacement card each year is free of charge."
    assert replies[4]["text"].startswith("补办新卡需要支付工本费")


def test_eval_prints_errors_and_accuracy_last(data_dir: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cases = tmp_path / "cases.csv"
    # The fixture cases plus one deliberately mislabelled case, to see an error reported.
    cases.write_text((DATA / "cases.csv").read_text(encoding="utf-8") + "How do I block my card?,fund_risk\n", encoding="utf-8")
    code, out, _ = run(
        ["brain", "eval", "--kb", str(FIXTURE_KB), "--data-dir", str(data_dir), "--cases", str(cases)], capsys
    )
    assert code == 0
    lines = out.splitlines()
    assert lines[-1] == "accuracy: 0.9091"
    assert "fund_risk: 1/2 wrong" in lines
    assert any(line.startswith("    'How do I block my card?' -> card_lost") for line in lines)


def test_bad_knowledge_base_is_one_error_line_per_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "kb.csv"
    bad.write_text("id,question,answer\na,Where is it?,\nb,,Answer.\n", encoding="utf-8")
    code, out, err = run(["brain", "ask", "--kb", str(bad), "--data-dir", str(tmp_path), "hello"], capsys)
    assert code == 2 and out == ""
    assert err.splitlines() == [
        f"{bad}:2: answer: empty for new id 'a'",
        f"avatar: error: {bad}:3: question: empty (2 errors)",
    ]
    code, _, err = run(["brain", "chat", "--kb", str(tmp_path / "nope.yaml"), "--data-dir", str(tmp_path)], capsys)
    assert code == 2 and err.strip() == f"avatar: error: {tmp_path / 'nope.yaml'}: no such file or directory"


def test_bad_cases_files(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["brain", "eval", "--kb", str(FIXTURE_KB), "--data-dir", str(data_dir), "--cases"]
    code, _, err = run([*base, str(tmp_path / "missing.csv")], capsys)
    assert code == 2 and err.startswith("avatar: error: ") and "missing.csv: No such file or directory" in err
    unknown = tmp_path / "unknown.csv"
    unknown.write_text("text,topic\nhello,no_such_topic\n", encoding="utf-8")
    code, _, err = run([*base, str(unknown)], capsys)
    assert code == 2
    assert err.strip() == f"avatar: error: {unknown}: 1 expected topics are not in the knowledge base: no_such_topic"
    short = tmp_path / "short.csv"
    short.write_text("text,topic\njust one column\n", encoding="utf-8")
    code, _, err = run([*base, str(short)], capsys)
    assert code == 2 and err.strip() == f"avatar: error: {short}:2: expected utterance,expected_topic"
    header_only = tmp_path / "header.csv"
    header_only.write_text("text,topic\n", encoding="utf-8")
    code, _, err = run([*base, str(header_only)], capsys)
    assert code == 2 and "no cases after the header row" in err


def test_llm_url_needs_a_model(data_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AVATAR_LLM_MODEL", raising=False)
    code, _, err = run(
        ["brain", "ask", "--kb", str(FIXTURE_KB), "--data-dir", str(data_dir), "--llm-url", "http://127.0.0.1:9/v1", "hi"],
        capsys,
    )
    assert code == 2 and err.strip() == "avatar: error: --llm-url needs --llm-model (or AVATAR_LLM_MODEL)"
