"""Knowledge-base loading: both formats, merging, and validation errors with file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from avatar.brain.kb import KBError, default_kb_path, detect_lang, load_kb

FIXTURE_KB = Path(__file__).parent / "data" / "brain" / "kb"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def errors_of(path: Path) -> list[str]:
    with pytest.raises(KBError) as info:
        load_kb(path)
    return info.value.errors


def test_fixture_kb_loads_yaml_and_csv_together() -> None:
    kb = load_kb(FIXTURE_KB)
    assert kb.languages() == ["en", "zh"]
    card_lost = kb.entries["card_lost"]
    # CSV rows for a YAML id add question variants; the YAML answer, details and place stay.
    assert "I dropped my card somewhere in town" in card_lost.questions
    assert card_lost.questions[0] == "I lost my card"
    assert card_lost.answer.startswith("Freeze your card in the app")
    assert card_lost.details["fee"] == "Your first replacement card each year is free of charge."
    assert (card_lost.product, card_lost.scenario, card_lost.product_name) == ("cards", "lost_cards", "Cards")
    assert card_lost.source.endswith("bank_en.yaml:12")
    # A CSV-only entry: the answer of its first row, no product, its own lang column.
    hours = kb.entries["zh_branch_hours"]
    assert hours.lang == "zh" and hours.product is None
    assert hours.questions == ("网点几点开门", "周末营业吗", "节假日网点上班吗")
    assert kb.entries["card_fraud"].handoff and not kb.entries["card_lost"].handoff
    assert kb.entries["fund_risk"].risk_notice
    assert kb.notice("zh", "risk") == "理财非存款，产品有风险，投资须谨慎。"
    assert kb.notice("en", "greeting") is None
    assert len(kb.digest) == 64


def test_csv_language_is_detected_without_a_lang_column(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "kb.csv",
        "id,question,answer\nhours,When do you open?,We open at nine.\nzh_hours,几点开门,九点开门。\nzh_hours,什么时候营业,\n",
    )
    kb = load_kb(path)
    assert kb.entries["hours"].lang == "en"
    assert kb.entries["zh_hours"].lang == "zh"
    assert kb.entries["zh_hours"].questions == ("几点开门", "什么时候营业")
    assert detect_lang("ATM 取款") == "zh"


def test_yaml_scalars_stay_text(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "kb.yaml",
        """lang: en
products:
  - id: p
    scenarios:
      - id: s
        entries:
          - id: open
            questions: [No, 24/7, 3.14]
            answer: Yes
""",
    )
    entry = load_kb(path).entries["open"]
    assert entry.questions == ("No", "24/7", "3.14")
    assert entry.answer == "Yes"


def test_every_yaml_error_is_reported_with_file_line_and_field(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "faq.yaml",
        """lang: en
products:
  - id: cards
    scenarios:
      - id: lost
        entries:
          - id: ok_entry
            questions: [I lost my card]
            answer: Freeze it in the app.
          - id: no_questions
            questions: []
            answer: Something.
          - id: bad_flag
            questions: ["Is it free?"]
            answer: Yes it is.
            handoff: maybe
          - id: ok_entry
            questions: [Duplicate]
            answer: Again.
          - id: typo_field
            question: [Singular by mistake]
            answer: Hello.
          - id: bad_detail
            questions: ["How much?"]
            answer: It depends.
            details:
              price: Ten.
          - id: risky
            risk_notice: true
            questions: ["Are funds risky?"]
            answer: They can be.
          - id: asks_secret
            questions: ["How do I log in?"]
            answer: Please tell us your password so we can log in for you.
          - id: bad_lang
            lang: fr
            questions: [Bonjour]
            answer: Salut.
""",
    )
    errors = errors_of(path)
    text = "\n".join(errors)
    assert f"{path}:11: products[0].scenarios[0].entries[1].questions: must be a non-empty list" in errors
    assert f"{path}:16: products[0].scenarios[0].entries[2].handoff: must be true or false, not 'maybe'" in errors
    assert f"{path}:17: products[0].scenarios[0].entries[3].id: duplicate id 'ok_entry' (first defined at {path}:7)" in errors
    assert f"{path}:21: products[0].scenarios[0].entries[4].question: unknown field" in text
    assert f"{path}:20: products[0].scenarios[0].entries[4].questions: missing (a non-empty list)" in errors
    assert f"{path}:27: products[0].scenarios[0].entries[5].details.price: unknown field" in text
    assert (
        f"{path}:29: products[0].scenarios[0].entries[6].risk_notice: entry 'risky' needs a risk statement "
        "but no file sets notices.risk for lang 'en'"
    ) in errors
    assert f"{path}:34: products[0].scenarios[0].entries[7].answer: asks the customer for a password" in text
    assert f"{path}:36: products[0].scenarios[0].entries[8].lang: must be one of en, zh, not 'fr'" in errors
    assert len(errors) == 9
    with pytest.raises(KBError, match=r"invalid knowledge base: .*\(9 errors\)"):
        load_kb(path)


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "broken.yaml", "lang: en\nproducts:\n  - id: p\n    scenarios: [\n")
    errors = errors_of(path)
    assert len(errors) == 1 and errors[0].startswith(f"{path}:5: YAML syntax error")


def test_yaml_structure_errors(tmp_path: Path) -> None:
    path = write(tmp_path, "shape.yaml", "lang: en\nproducts:\n  - just a string\n  - id: p\n    scenarios: {}\n")
    assert errors_of(path) == [
        f"{path}:3: products[0]: must be a mapping",
        f"{path}:5: products[1].scenarios: must be a non-empty list",
    ]
    top = write(tmp_path, "list.yaml", "- a\n- b\n")
    assert errors_of(top) == [f"{top}:1: (top level): must be a mapping"]
    no_lang = write(
        tmp_path,
        "nolang.yaml",
        "products:\n  - id: p\n    scenarios:\n      - id: s\n        entries:\n          - id: e\n"
        "            questions: [q]\n            answer: a\n",
    )
    assert errors_of(no_lang) == [
        f"{no_lang}:6: products[0].scenarios[0].entries[0].lang: missing (set lang on the entry or at the top of the file)"
    ]


def test_csv_errors_name_line_and_field(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "kb.csv",
        "id,question,answer\n"
        "card_lost,I lost my card,Freeze it in the app.\n"
        "card_lost,My card is gone,\n"
        "new_topic,Where is my refund?,\n"
        ",No id here,Answer.\n"
        "card_lost,,\n"
        "card_lost,Lost again,A different answer.\n"
        "too,many,columns,here\n"
        "\n"
        "card_lost,\"Quoted, with a comma\",\n",
    )
    assert errors_of(path) == [
        f"{path}:4: answer: empty for new id 'new_topic'",
        f"{path}:5: id: empty",
        f"{path}:6: question: empty",
        f"{path}:7: answer: differs from the answer given for 'card_lost' at {path}:2 (leave it empty)",
        f"{path}:8: expected 3 columns (id,question,answer), found 4",
    ]


def test_csv_header_and_lang_errors(tmp_path: Path) -> None:
    header = write(tmp_path, "header.csv", "id,text\na,b\n")
    assert errors_of(header) == [f"{header}:1: header: must be id,question,answer[,lang], not id,text"]
    lang = write(tmp_path, "lang.csv", "id,question,answer,lang\na,Hello?,Hi.,de\n")
    assert errors_of(lang) == [f"{lang}:2: lang: must be one of en, zh, not 'de'"]
    empty = write(tmp_path, "empty.csv", "")
    assert errors_of(empty) == [f"{empty}:1: empty file (expected the header id,question,answer[,lang])"]


def test_errors_across_files_of_a_folder_are_all_reported(tmp_path: Path) -> None:
    folder = tmp_path / "kb"
    folder.mkdir()
    write(folder, "a.yaml", "lang: en\nproducts:\n  - id: p\n    scenarios:\n      - id: s\n        entries:\n"
          "          - id: dup\n            questions: [q]\n            answer: a\n")
    (folder / "sub").mkdir()
    write(folder / "sub", "b.csv", "id,question,answer\ndup,another question,\nfresh,q2,\n")
    write(folder, "c.yaml", "lang: en\nproducts:\n  - id: p2\n    scenarios:\n      - id: s2\n        entries:\n"
          "          - id: dup\n            questions: [q3]\n            answer: b\n")
    errors = errors_of(folder)
    assert any(e.startswith(f"{folder / 'c.yaml'}:7: products[0].scenarios[0].entries[0].id: duplicate id 'dup'") for e in errors)
    assert f"{folder / 'sub' / 'b.csv'}:3: answer: empty for new id 'fresh'" in errors
    assert len(errors) == 2


def test_bad_paths(tmp_path: Path) -> None:
    assert errors_of(tmp_path / "missing") == [f"{tmp_path / 'missing'}: no such file or directory"]
    assert errors_of(tmp_path) == [f"{tmp_path}: no .yaml, .yml or .csv files in this folder"]
    text = write(tmp_path, "kb.txt", "hello")
    assert errors_of(text) == [f"{text}: not a knowledge-base file (expected .yaml, .yml or .csv)"]
    binary = tmp_path / "bin.csv"
    binary.write_bytes(b"id,question,answer\n\xff\xfe\n")
    assert errors_of(binary) == [f"{binary}: not UTF-8 text (byte 19)"]


def test_shipped_knowledge_base_is_valid() -> None:
    kb = load_kb(None)
    assert kb.files[0].is_relative_to(default_kb_path())
    assert not any("eval" in f.parts for f in kb.files)  # evaluation sets are not knowledge
    assert kb.languages() == ["en", "zh"]
    assert sum(e.lang == "en" for e in kb.entries.values()) == 77
    assert sum(e.lang == "zh" for e in kb.entries.values()) >= 60
    assert all(kb.notice(e.lang, "risk") for e in kb.entries.values() if e.risk_notice)
