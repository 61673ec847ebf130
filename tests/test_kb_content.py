"""Checks on the content of the shipped knowledge base and its evaluation sets.

These read the YAML and CSV files directly (not through the brain's loader), so they hold the
content to account on its own: coverage of BANKING77's intents, the Chinese topics, the
evaluation sets not repeating knowledge-base questions, the risk notices and handoff flags,
and no real bank named in anything the avatar says.
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
KB_DIR = REPO_ROOT / "assets" / "knowledge"
EVAL_DIR = KB_DIR / "eval"
BANKING77_DIR = REPO_ROOT.parent / "shared" / "datasets" / "banking77"

ASPECTS = {"fee", "time", "requirements", "limit", "channel"}
ENTRY_KEYS = {"id", "questions", "answer", "handoff", "risk_notice", "lang", "details"}

# Real banks and payment firms that must never appear in an answer of this generic bank.
# English names are matched as whole, case-sensitive words ("Chase" must not hit "purchase").
BANK_NAMES_ZH = (
    "工商银行", "工行", "农业银行", "农行", "中国银行", "建设银行", "建行", "交通银行", "交行",
    "招商银行", "招行", "浦发", "民生银行", "兴业银行", "光大银行", "中信银行", "平安银行",
    "邮储", "邮政储蓄", "华夏银行", "广发银行", "微众银行", "网商银行", "汇丰", "花旗", "渣打",
)
BANK_NAMES_EN = (
    "HSBC", "Barclays", "Revolut", "Monzo", "Lloyds", "NatWest", "Santander", "Chase",
    "Wells Fargo", "Citibank", "Citi", "Bank of America", "Starling", "N26", "Wise",
    "Deutsche Bank", "BNP", "ING", "Standard Chartered", "ICBC", "Halifax",
)
BANK_NAME_EN_RE = re.compile(r"\b(" + "|".join(re.escape(n) for n in BANK_NAMES_EN) + r")\b")


@dataclass(frozen=True)
class Entry:
    """One knowledge-base entry as written in a YAML file."""

    id: str
    lang: str
    file: str
    product: str
    questions: tuple[str, ...]
    answer: str
    handoff: bool
    risk_notice: bool
    details: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class KbFile:
    path: Path
    lang: str
    risk_notice_text: str
    entries: tuple[Entry, ...]


def _load_yaml(path: Path) -> KbFile:
    data: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{path}: top level must be a mapping"
    lang = data.get("lang")
    assert lang in ("en", "zh"), f"{path}: lang must be 'en' or 'zh', got {lang!r}"
    notices = data.get("notices") or {}
    entries: list[Entry] = []
    for product in data["products"]:
        for scenario in product["scenarios"]:
            assert scenario.get("id") and scenario.get("name"), f"{path}: scenario without id or name"
            for raw in scenario["entries"]:
                unknown = set(raw) - ENTRY_KEYS
                assert not unknown, f"{path}: entry {raw.get('id')!r} has unknown fields {unknown}"
                entries.append(
                    Entry(
                        id=raw["id"],
                        lang=raw.get("lang", lang),
                        file=path.name,
                        product=product["id"],
                        questions=tuple(raw["questions"]),
                        answer=raw["answer"],
                        handoff=raw.get("handoff", False),
                        risk_notice=raw.get("risk_notice", False),
                        details=dict(raw.get("details") or {}),
                    )
                )
    return KbFile(path, lang, str(notices.get("risk") or ""), tuple(entries))


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def _normalise(text: str) -> str:
    """Lower-case and drop whitespace and punctuation: 'same question' regardless of typing."""
    return re.sub(r"[\W_]+", "", text.lower())


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?。！？])\s*", text.strip()) if s]


@pytest.fixture(scope="module")
def kb_files() -> list[KbFile]:
    paths = sorted(KB_DIR.glob("*/*.yaml"))
    assert paths, f"no YAML files under {KB_DIR}"
    return [_load_yaml(p) for p in paths]


@pytest.fixture(scope="module")
def entries(kb_files: list[KbFile]) -> list[Entry]:
    return [e for f in kb_files for e in f.entries]


@pytest.fixture(scope="module")
def en_entries(kb_files: list[KbFile]) -> list[Entry]:
    return [e for f in kb_files if f.path.parent.name == "en" for e in f.entries]


@pytest.fixture(scope="module")
def zh_entries(kb_files: list[KbFile]) -> list[Entry]:
    return [e for f in kb_files if f.path.parent.name == "zh" for e in f.entries]


def _banking77_file(name: str) -> Path:
    path = BANKING77_DIR / name
    if not path.is_file():
        pytest.skip(f"BANKING77 dataset not found at {path}")
    return path


def test_every_banking77_intent_has_exactly_one_entry(en_entries: list[Entry]) -> None:
    categories = json.loads(_banking77_file("categories.json").read_text(encoding="utf-8"))
    assert len(categories) == 77
    counts = Counter(e.id for e in en_entries)
    assert {c: counts[c] for c in categories if counts[c] != 1} == {}
    assert set(counts) == set(categories), f"entries that are not intents: {set(counts) - set(categories)}"


def test_entry_ids_are_unique_across_the_knowledge_base(entries: list[Entry]) -> None:
    duplicates = [i for i, n in Counter(e.id for e in entries).items() if n > 1]
    assert duplicates == []


def test_every_entry_has_an_answer_and_at_least_three_questions(entries: list[Entry]) -> None:
    for e in entries:
        assert e.answer.strip(), f"{e.file}: {e.id} has an empty answer"
        assert len(e.questions) >= 3, f"{e.file}: {e.id} has {len(e.questions)} questions"
        assert all(isinstance(q, str) and q.strip() for q in e.questions), f"{e.file}: {e.id} empty question"
        assert len({_normalise(q) for q in e.questions}) == len(e.questions), f"{e.id}: repeated question"
        assert isinstance(e.handoff, bool) and isinstance(e.risk_notice, bool), f"{e.id}: flags must be bool"


def test_answers_are_short_enough_to_speak(entries: list[Entry]) -> None:
    for e in entries:
        n = len(_sentences(e.answer))
        assert 1 <= n <= 3, f"{e.file}: {e.id} answer has {n} sentences"


def test_details_use_only_the_agreed_aspects(entries: list[Entry]) -> None:
    with_details = [e for e in entries if e.details]
    assert len(with_details) >= 40
    for e in with_details:
        assert set(e.details) <= ASPECTS, f"{e.id}: unknown aspects {set(e.details) - ASPECTS}"
        assert all(isinstance(v, str) and v.strip() for v in e.details.values()), f"{e.id}: empty detail"


def test_answers_match_their_language(en_entries: list[Entry], zh_entries: list[Entry]) -> None:
    cjk = re.compile(r"[\u4e00-\u9fff]")
    for e in en_entries:
        assert e.lang == "en" and not cjk.search(e.answer), f"{e.id}: English entry with Chinese text"
    for e in zh_entries:
        assert e.lang == "zh" and cjk.search(e.answer), f"{e.id}: Chinese entry without Chinese text"


def test_chinese_part_has_at_least_sixty_topics(kb_files: list[KbFile], zh_entries: list[Entry]) -> None:
    zh_files = [f for f in kb_files if f.path.parent.name == "zh"]
    assert zh_files and all(f.lang == "zh" for f in zh_files)
    assert len(zh_entries) >= 60
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", e.id) for e in zh_entries), "Chinese ids must be snake_case"
    assert all(4 <= len(e.questions) <= 8 for e in zh_entries)


def test_risk_notices_exist_in_both_languages(kb_files: list[KbFile], entries: list[Entry]) -> None:
    for lang in ("en", "zh"):
        texts = {f.risk_notice_text for f in kb_files if f.lang == lang}
        assert texts and all(t.strip() for t in texts), f"{lang}: notices.risk missing or empty"
    zh_notice = next(f.risk_notice_text for f in kb_files if f.lang == "zh")
    assert "理财非存款" in zh_notice and "投资须谨慎" in zh_notice
    flagged = [e for e in entries if e.risk_notice]
    assert flagged, "no entry carries risk_notice"
    wealth = [e for e in entries if e.product == "wealth"]
    assert wealth and all(e.risk_notice for e in wealth), "every wealth and fund topic needs risk_notice"
    assert all(e.product == "wealth" for e in flagged), "risk_notice only on investment topics"


def test_human_cases_are_flagged_for_handoff(entries: list[Entry]) -> None:
    by_id = {e.id: e for e in entries}
    for topic in ("complaint", "fraud_in_progress", "unauthorized_transaction", "compromised_card",
                  "transaction_charged_twice", "card_payment_not_recognised"):
        assert by_id[topic].handoff, f"{topic} must hand over to a human"
    for topic in ("balance_enquiry", "activate_my_card", "exchange_rate", "card_loss_report"):
        assert not by_id[topic].handoff, f"{topic} is self-service and must not hand over"
    assert sum(e.handoff for e in entries) <= len(entries) // 5, "handoff is for the genuinely human cases"


def test_no_answer_names_a_real_bank(kb_files: list[KbFile]) -> None:
    for f in kb_files:
        spoken = [f.risk_notice_text] + [
            text for e in f.entries for text in (e.answer, *e.details.values())
        ]
        for text in spoken:
            assert not [n for n in BANK_NAMES_ZH if n in text], f"{f.path.name}: bank name in {text!r}"
            assert not BANK_NAME_EN_RE.search(text), f"{f.path.name}: bank name in {text!r}"


def test_bank_name_check_catches_names_and_spares_ordinary_words() -> None:
    assert BANK_NAME_EN_RE.search("Contact Barclays for help")
    assert not BANK_NAME_EN_RE.search("a purchase, otherwise likewise, doing things")
    assert not [n for n in BANK_NAMES_ZH if n in "中国人民银行征信中心"]


def test_answers_hold_no_long_numbers(entries: list[Entry]) -> None:
    # A long digit run in an answer would be an invented phone, card or account number.
    for e in entries:
        for text in (e.answer, *e.details.values()):
            assert not re.search(r"\d{6,}", text), f"{e.id}: long number in {text!r}"


def test_zh_cases_cover_every_topic_with_fresh_wording(zh_entries: list[Entry]) -> None:
    header, rows = _read_csv(EVAL_DIR / "zh_cases.csv")
    assert header == ["text", "topic"]
    assert len(rows) >= 150
    topics = {e.id for e in zh_entries}
    assert {t for _, t in rows} <= topics, f"unknown topics: {({t for _, t in rows}) - topics}"
    counts = Counter(t for _, t in rows)
    assert {t: counts[t] for t in topics if counts[t] < 2} == {}
    kb_questions = {_normalise(q) for e in zh_entries for q in e.questions}
    assert [text for text, _ in rows if _normalise(text) in kb_questions] == []
    assert len({_normalise(text) for text, _ in rows}) == len(rows), "repeated case"


def test_small_kb_is_self_contained_with_three_questions_per_topic() -> None:
    header, rows = _read_csv(EVAL_DIR / "small_kb.csv")
    assert header == ["id", "question", "answer", "lang"]
    by_id: dict[str, list[list[str]]] = {}
    for row in rows:
        by_id.setdefault(row[0], []).append(row)
    assert len(by_id) >= 20
    for topic, topic_rows in by_id.items():
        assert len(topic_rows) == 3, f"{topic}: {len(topic_rows)} questions"
        first, *later = topic_rows
        assert first[2].strip(), f"{topic}: the first row must carry the answer"
        assert all(r[2] == "" for r in later), f"{topic}: later rows repeat the answer"
        assert {r[3] for r in topic_rows} <= {"en", "zh"} and len({r[3] for r in topic_rows}) == 1
        assert all(r[1].strip() for r in topic_rows)
    # Ids sharing a row order: all rows of an id are contiguous, so the first row is unambiguous.
    seen: list[str] = []
    for row in rows:
        if not seen or seen[-1] != row[0]:
            assert row[0] not in seen, f"{row[0]}: rows are not contiguous"
            seen.append(row[0])

    case_header, cases = _read_csv(EVAL_DIR / "small_kb_cases.csv")
    assert case_header == ["text", "topic"]
    assert {t for _, t in cases} == set(by_id), "cases must cover exactly the small KB's topics"
    assert min(Counter(t for _, t in cases).values()) >= 3
    questions = {_normalise(r[1]) for r in rows}
    assert [text for text, _ in cases if _normalise(text) in questions] == []


def test_banking77_train_csv_adds_variants_to_the_77_entries(en_entries: list[Entry]) -> None:
    header, rows = _read_csv(KB_DIR / "en" / "banking77_train.csv")
    assert header == ["id", "question", "answer"]
    assert {r[0] for r in rows} == {e.id for e in en_entries}
    assert all(r[2] == "" and r[1].strip() for r in rows), "answers come from banking77.yaml; questions non-empty"


def test_banking77_train_csv_is_the_unchanged_train_split() -> None:
    train_header, train = _read_csv(_banking77_file("train.csv"))
    assert train_header == ["text", "category"]
    _, rows = _read_csv(KB_DIR / "en" / "banking77_train.csv")
    assert len(rows) == len(train)
    assert [(r[0], r[1]) for r in rows] == [(category, text) for text, category in train]


def test_no_hand_written_question_is_a_banking77_test_utterance(en_entries: list[Entry]) -> None:
    """The test split is for measuring only: none of its utterances may be among what the brain
    learns from (the YAML's own question variants; the CSV copies the train split)."""
    with _banking77_file("test.csv").open(encoding="utf-8", newline="") as fh:
        test = {_normalise(row["text"]) for row in csv.DictReader(fh)}
    leaked = [q for e in en_entries for q in e.questions if _normalise(q) in test]
    assert not leaked, leaked
