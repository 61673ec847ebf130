"""The knowledge base: entries (product -> scenario -> entry), their loaders and validation.

A knowledge base is loaded from one file or a folder of files (``*.yaml``, ``*.yml``, ``*.csv``,
searched recursively); ``KB_FORMAT.md`` beside this module documents both formats. Loading
validates everything and raises ``KBError`` listing *every* problem as ``file:line: field: what``,
so a bank fixes its files in one pass.

The loaded ``KnowledgeBase`` is immutable and shared by every conversation.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import yaml

from avatar.brain.compliance import asks_for_secret

LANGS: tuple[str, ...] = ("en", "zh")
# Follow-up aspects an entry's ``details`` may answer ("and what does it cost?" -> fee).
ASPECTS: tuple[str, ...] = ("fee", "time", "requirements", "limit", "channel")
# Texts a knowledge base may set per language under ``notices``: the risk statement, and
# overrides of the brain's own wording for greetings, handover and out-of-scope replies.
NOTICE_KEYS: tuple[str, ...] = ("risk", "greeting", "thanks", "goodbye", "handoff", "out_of_scope")
KB_SUFFIXES: tuple[str, ...] = (".yaml", ".yml", ".csv")

_ID_RE = re.compile(r"^[^\s]{1,100}$")  # BANKING77 has "reverted_card_payment?"
_CJK_RE = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_ENTRY_KEYS = frozenset({"id", "questions", "answer", "handoff", "risk_notice", "lang", "details"})
_STR_TAG = "tag:yaml.org,2002:str"
_BOOL_TAG = "tag:yaml.org,2002:bool"
_NULL_TAG = "tag:yaml.org,2002:null"


def default_kb_path() -> Path:
    """The knowledge base that ships with the package: ``assets/knowledge`` (both languages)."""
    return Path(__file__).resolve().parents[2] / "assets" / "knowledge"


class KBError(ValueError):
    """A knowledge base cannot be loaded. ``errors`` holds one ``file:line: field: problem`` each."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        count = len(self.errors)
        head = "invalid knowledge base" if count != 1 else "invalid knowledge base:"
        body = "; ".join(self.errors) if count <= 3 else "; ".join(self.errors[:3]) + f"; ... ({count} errors)"
        super().__init__(f"{head}{':' if count != 1 else ''} {body}")


@dataclass(frozen=True)
class Entry:
    """One problem the knowledge base answers.

    ``questions`` are the ways customers ask it (from YAML and CSV); ``answer`` is spoken as is;
    ``details`` maps an aspect from ``ASPECTS`` to a follow-up answer; ``source`` is ``file:line``.
    """

    id: str
    questions: tuple[str, ...]
    answer: str
    lang: str
    handoff: bool = False
    risk_notice: bool = False
    details: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    product: str | None = None
    product_name: str | None = None
    scenario: str | None = None
    scenario_name: str | None = None
    source: str = ""

    @property
    def title(self) -> str:
        """How the brain names the topic to a customer (its first question variant)."""
        return self.questions[0]


@dataclass(frozen=True)
class KnowledgeBase:
    """Validated entries by id (file order), notices by language, and a digest of the content."""

    entries: Mapping[str, Entry]
    notices: Mapping[str, Mapping[str, str]]
    files: tuple[Path, ...]
    digest: str

    def entry(self, topic: str) -> Entry:
        return self.entries[topic]

    def languages(self) -> list[str]:
        """Languages that have at least one entry, in ``LANGS`` order."""
        present = {entry.lang for entry in self.entries.values()}
        return [lang for lang in LANGS if lang in present]

    def notice(self, lang: str, key: str) -> str | None:
        """The ``notices.<key>`` text for ``lang``, or ``None`` when the knowledge base has none."""
        return self.notices.get(lang, {}).get(key)


def detect_lang(text: str) -> str:
    """``"zh"`` when the text contains Chinese characters, else ``"en"``."""
    return "zh" if _CJK_RE.search(text) else "en"


# ----------------------------------------------------------------------------------- loading


@dataclass
class _Draft:
    id: str
    questions: list[str]
    answer: str
    lang: str
    handoff: bool
    risk_notice: bool
    details: dict[str, str]
    product: str | None
    product_name: str | None
    scenario: str | None
    scenario_name: str | None
    source: str
    from_yaml: bool
    risk_where: tuple[str, str] = ("", "")  # where risk_notice is set: (file:line, field path)


@dataclass
class _Loader:
    errors: list[str] = field(default_factory=list)
    drafts: dict[str, _Draft] = field(default_factory=dict)
    notices: dict[str, dict[str, tuple[str, str]]] = field(default_factory=dict)  # lang -> key -> (text, where)

    def error(self, where: str, path: str, problem: str) -> None:
        self.errors.append(f"{where}: {path}: {problem}" if path else f"{where}: {problem}")


def kb_files(path: Path) -> list[Path]:
    """The knowledge-base files at ``path`` (one file, or a folder searched recursively), sorted.

    Raises ``KBError`` when the path is missing, has an unknown suffix or holds no such file.
    """
    if not path.exists():
        raise KBError([f"{path}: no such file or directory"])
    if path.is_file():
        if path.suffix.lower() not in KB_SUFFIXES:
            raise KBError([f"{path}: not a knowledge-base file (expected .yaml, .yml or .csv)"])
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in KB_SUFFIXES)
    if not files:
        raise KBError([f"{path}: no .yaml, .yml or .csv files in this folder"])
    return files


def load_kb(path: Path | None = None, *, exclude: tuple[str, ...] = ("eval",)) -> KnowledgeBase:
    """Load and validate the knowledge base at ``path`` (default: ``default_kb_path()``).

    In a folder, sub-folders named in ``exclude`` are skipped (the shipped folder keeps its
    evaluation sets in ``eval/``, which are not knowledge). YAML files are read before CSV
    files so that CSV rows for an id defined in YAML only add question variants.
    Raises ``KBError`` with every problem found.
    """
    root = default_kb_path() if path is None else Path(path)
    files = kb_files(root)
    if root.is_dir():
        files = [f for f in files if not set(f.relative_to(root).parts[:-1]) & set(exclude)]
        if not files:
            raise KBError([f"{root}: no .yaml, .yml or .csv files in this folder"])
    loader = _Loader()
    digest = hashlib.sha256()
    texts: dict[Path, str] = {}
    for file in files:
        try:
            raw = file.read_bytes()
            texts[file] = raw.decode("utf-8-sig")
        except OSError as exc:
            loader.error(str(file), "", f"cannot read: {exc.strerror or exc}")
            continue
        except UnicodeDecodeError as exc:
            loader.error(str(file), "", f"not UTF-8 text (byte {exc.start})")
            continue
        digest.update(file.name.encode() + b"\0" + raw + b"\0")
    for file in files:
        if file in texts and file.suffix.lower() in (".yaml", ".yml"):
            _load_yaml(loader, file, texts[file])
    for file in files:
        if file in texts and file.suffix.lower() == ".csv":
            _load_csv(loader, file, texts[file])
    entries = _finish(loader)
    if loader.errors:
        raise KBError(loader.errors)
    if not entries:
        raise KBError([f"{root}: the knowledge base has no entries"])
    notices = {
        lang: MappingProxyType({key: text for key, (text, _) in by_key.items()})
        for lang, by_key in loader.notices.items()
    }
    return KnowledgeBase(
        entries=MappingProxyType(entries),
        notices=MappingProxyType(notices),
        files=tuple(files),
        digest=digest.hexdigest(),
    )


def _finish(loader: _Loader) -> dict[str, Entry]:
    entries: dict[str, Entry] = {}
    for draft in loader.drafts.values():
        if draft.risk_notice and "risk" not in loader.notices.get(draft.lang, {}):
            loader.error(
                *draft.risk_where,
                f"entry '{draft.id}' needs a risk statement but no file sets notices.risk for lang '{draft.lang}'",
            )
        questions = list(dict.fromkeys(q for q in draft.questions))
        entries[draft.id] = Entry(
            id=draft.id,
            questions=tuple(questions),
            answer=draft.answer,
            lang=draft.lang,
            handoff=draft.handoff,
            risk_notice=draft.risk_notice,
            details=MappingProxyType(dict(draft.details)),
            product=draft.product,
            product_name=draft.product_name,
            scenario=draft.scenario,
            scenario_name=draft.scenario_name,
            source=draft.source,
        )
    return entries


# -------------------------------------------------------------------------------------- YAML


def _where(file: Path, node: yaml.Node) -> str:
    return f"{file}:{node.start_mark.line + 1}"


def _mapping(
    loader: _Loader, file: Path, node: yaml.Node, path: str, allowed: frozenset[str] | None = None
) -> dict[str, tuple[yaml.Node, yaml.Node]] | None:
    """The mapping's items by key (key node, value node); ``None`` (and an error) if not a mapping."""
    if not isinstance(node, yaml.MappingNode):
        loader.error(_where(file, node), path or "(top level)", "must be a mapping")
        return None
    items: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    for key_node, value_node in node.value:
        key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
        sub = f"{path}.{key}" if path else key
        if key in items:
            loader.error(_where(file, key_node), sub, "duplicate key")
            continue
        if allowed is not None and key not in allowed:
            loader.error(_where(file, key_node), sub, f"unknown field (expected one of {', '.join(sorted(allowed))})")
            continue
        items[key] = (key_node, value_node)
    return items


def _text(loader: _Loader, file: Path, node: yaml.Node, path: str) -> str | None:
    """A non-empty text scalar. The raw scalar text is taken as written, so a question such as
    ``No`` or ``24/7`` stays text instead of becoming a boolean or a number."""
    if not isinstance(node, yaml.ScalarNode) or (node.tag == _NULL_TAG and not node.value):
        loader.error(_where(file, node), path, "must be a non-empty text")
        return None
    text = " ".join(str(node.value).split()) if node.style in (None, "") else str(node.value).strip()
    if not text:
        loader.error(_where(file, node), path, "must be a non-empty text")
        return None
    return text


def _flag(loader: _Loader, file: Path, node: yaml.Node, path: str) -> bool:
    if isinstance(node, yaml.ScalarNode) and node.tag == _BOOL_TAG:
        return str(node.value).lower() in ("true", "yes", "on", "y")
    loader.error(_where(file, node), path, f"must be true or false, not {getattr(node, 'value', '?')!r}")
    return False


def _seq(loader: _Loader, file: Path, node: yaml.Node | None, path: str, where: str) -> list[yaml.Node]:
    if node is None:
        loader.error(where, path, "missing (a non-empty list)")
        return []
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        loader.error(_where(file, node), path, "must be a non-empty list")
        return []
    return list(node.value)


def _lang(loader: _Loader, file: Path, node: yaml.Node, path: str) -> str | None:
    value = _text(loader, file, node, path)
    if value is None:
        return None
    if value not in LANGS:
        loader.error(_where(file, node), path, f"must be one of {', '.join(LANGS)}, not {value!r}")
        return None
    return value


def _ident(loader: _Loader, file: Path, node: yaml.Node, path: str) -> str | None:
    value = _text(loader, file, node, path)
    if value is not None and not _ID_RE.match(value):
        loader.error(_where(file, node), path, f"{value!r} is not a valid id (no spaces, at most 100 characters)")
        return None
    return value


def _load_yaml(loader: _Loader, file: Path, text: str) -> None:
    try:
        root = yaml.compose(io.StringIO(text), Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        loader.error(f"{file}{line}", "", f"YAML syntax error: {exc.problem or exc.context}")
        return
    except yaml.YAMLError as exc:
        loader.error(str(file), "", f"YAML error: {exc}")
        return
    if root is None:
        loader.error(f"{file}:1", "", "empty file")
        return
    top = _mapping(loader, file, root, "", frozenset({"lang", "notices", "products"}))
    if top is None:
        return
    file_lang: str | None = None
    if "lang" in top:
        file_lang = _lang(loader, file, top["lang"][1], "lang")
    if "notices" in top:
        _load_notices(loader, file, top["notices"][1], file_lang)
    products = _seq(loader, file, top.get("products", (None, None))[1], "products", f"{file}:1")
    for p_index, p_node in enumerate(products):
        p_path = f"products[{p_index}]"
        product = _level(loader, file, p_node, p_path, "scenarios")
        if product is None:
            continue
        p_id, p_name, scenarios = product
        for s_index, s_node in enumerate(scenarios):
            s_path = f"{p_path}.scenarios[{s_index}]"
            scenario = _level(loader, file, s_node, s_path, "entries")
            if scenario is None:
                continue
            s_id, s_name, entries = scenario
            for e_index, e_node in enumerate(entries):
                _load_yaml_entry(
                    loader, file, e_node, f"{s_path}.entries[{e_index}]", file_lang, (p_id, p_name, s_id, s_name)
                )


def _level(
    loader: _Loader, file: Path, node: yaml.Node, path: str, children: str
) -> tuple[str | None, str | None, list[yaml.Node]] | None:
    """A product or a scenario: a mapping of ``id``, ``name`` (defaults to the id) and a list
    under ``children``. Errors are reported on ``loader``; ``None`` if ``node`` is no mapping."""
    level = _mapping(loader, file, node, path, frozenset({"id", "name", children}))
    if level is None:
        return None
    ident = _ident(loader, file, level["id"][1], f"{path}.id") if "id" in level else None
    if "id" not in level:
        loader.error(_where(file, node), f"{path}.id", "missing")
    name = _text(loader, file, level["name"][1], f"{path}.name") if "name" in level else ident
    items = _seq(loader, file, level.get(children, (None, None))[1], f"{path}.{children}", _where(file, node))
    return ident, name, items


def _load_notices(loader: _Loader, file: Path, node: yaml.Node, file_lang: str | None) -> None:
    notices = _mapping(loader, file, node, "notices", frozenset(NOTICE_KEYS))
    if notices is None:
        return
    if file_lang is None:
        loader.error(_where(file, node), "notices", "needs the file's top-level lang to say which language they are in")
        return
    for key, (_, value_node) in notices.items():
        text = _text(loader, file, value_node, f"notices.{key}")
        if text is None:
            continue
        where = _where(file, value_node)
        known = loader.notices.setdefault(file_lang, {})
        if key in known and known[key][0] != text:
            loader.error(where, f"notices.{key}", f"differs from the one for lang '{file_lang}' at {known[key][1]}")
            continue
        known.setdefault(key, (text, where))


def _load_yaml_entry(
    loader: _Loader,
    file: Path,
    node: yaml.Node,
    path: str,
    file_lang: str | None,
    parents: tuple[str | None, str | None, str | None, str | None],
) -> None:
    entry = _mapping(loader, file, node, path, _ENTRY_KEYS)
    if entry is None:
        return
    where = _where(file, node)
    ok = True
    entry_id = _ident(loader, file, entry["id"][1], f"{path}.id") if "id" in entry else None
    if "id" not in entry:
        loader.error(where, f"{path}.id", "missing")
    questions: list[str] = []
    for q_index, q_node in enumerate(
        _seq(loader, file, entry.get("questions", (None, None))[1], f"{path}.questions", where)
    ):
        question = _text(loader, file, q_node, f"{path}.questions[{q_index}]")
        if question is None:
            ok = False
        else:
            questions.append(question)
    answer = None
    if "answer" in entry:
        answer = _text(loader, file, entry["answer"][1], f"{path}.answer")
        if answer is not None and asks_for_secret(answer):
            loader.error(
                _where(file, entry["answer"][1]),
                f"{path}.answer",
                "asks the customer for a password, code or full card/ID number, which the brain never does",
            )
            ok = False
    else:
        loader.error(where, f"{path}.answer", "missing")
    handoff = _flag(loader, file, entry["handoff"][1], f"{path}.handoff") if "handoff" in entry else False
    risk = _flag(loader, file, entry["risk_notice"][1], f"{path}.risk_notice") if "risk_notice" in entry else False
    lang = _lang(loader, file, entry["lang"][1], f"{path}.lang") if "lang" in entry else file_lang
    if lang is None and "lang" not in entry:
        loader.error(where, f"{path}.lang", "missing (set lang on the entry or at the top of the file)")
    details: dict[str, str] = {}
    if "details" in entry:
        detail_map = _mapping(loader, file, entry["details"][1], f"{path}.details", frozenset(ASPECTS))
        for aspect, (_, value_node) in (detail_map or {}).items():
            text = _text(loader, file, value_node, f"{path}.details.{aspect}")
            if text is not None:
                details[aspect] = text
    if entry_id is None or answer is None or lang is None or not questions or not ok:
        return
    if entry_id in loader.drafts:
        loader.error(where, f"{path}.id", f"duplicate id '{entry_id}' (first defined at {loader.drafts[entry_id].source})")
        return
    product, product_name, scenario, scenario_name = parents
    loader.drafts[entry_id] = _Draft(
        id=entry_id,
        questions=questions,
        answer=answer,
        lang=lang,
        handoff=handoff,
        risk_notice=risk,
        details=details,
        product=product,
        product_name=product_name,
        scenario=scenario,
        scenario_name=scenario_name,
        source=where,
        from_yaml=True,
        risk_where=(_where(file, entry["risk_notice"][0]), f"{path}.risk_notice") if "risk_notice" in entry else ("", ""),
    )


# --------------------------------------------------------------------------------------- CSV


def _csv_rows(text: str) -> Iterator[tuple[int, list[str]]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    start = 1
    for row in reader:
        yield start, row
        start = reader.line_num + 1


def _load_csv(loader: _Loader, file: Path, text: str) -> None:
    rows = _csv_rows(text)
    try:
        header_line, header = next(rows)
    except StopIteration:
        loader.error(f"{file}:1", "", "empty file (expected the header id,question,answer[,lang])")
        return
    except csv.Error as exc:
        loader.error(f"{file}:1", "", f"CSV error: {exc}")
        return
    columns = [h.strip().lower() for h in header]
    if columns not in (["id", "question", "answer"], ["id", "question", "answer", "lang"]):
        loader.error(f"{file}:{header_line}", "header", f"must be id,question,answer[,lang], not {','.join(header)}")
        return
    width = len(columns)
    try:
        for line, row in rows:
            if not any(cell.strip() for cell in row):
                continue
            where = f"{file}:{line}"
            if len(row) != width:
                loader.error(where, "", f"expected {width} columns ({','.join(columns)}), found {len(row)}")
                continue
            entry_id, question = (" ".join(cell.split()) for cell in row[:2])
            answer = row[2].strip()
            lang = row[3].strip() if width == 4 else ""
            bad = False
            if not entry_id:
                loader.error(where, "id", "empty")
                bad = True
            elif not _ID_RE.match(entry_id):
                loader.error(where, "id", f"{entry_id!r} is not a valid id (no spaces, at most 100 characters)")
                bad = True
            if not question:
                loader.error(where, "question", "empty")
                bad = True
            if lang and lang not in LANGS:
                loader.error(where, "lang", f"must be one of {', '.join(LANGS)}, not {lang!r}")
                bad = True
            if answer and asks_for_secret(answer):
                loader.error(
                    where, "answer", "asks the customer for a password, code or full card/ID number, which the brain never does"
                )
                bad = True
            if bad:
                continue
            draft = loader.drafts.get(entry_id)
            if draft is None:
                if not answer:
                    loader.error(where, "answer", f"empty for new id '{entry_id}'")
                    continue
                loader.drafts[entry_id] = _Draft(
                    id=entry_id,
                    questions=[question],
                    answer=answer,
                    lang=lang or detect_lang(answer + question),
                    handoff=False,
                    risk_notice=False,
                    details={},
                    product=None,
                    product_name=None,
                    scenario=None,
                    scenario_name=None,
                    source=where,
                    from_yaml=False,
                )
                continue
            if not draft.from_yaml and answer and " ".join(answer.split()) != " ".join(draft.answer.split()):
                loader.error(
                    where, "answer", f"differs from the answer given for '{entry_id}' at {draft.source} (leave it empty)"
                )
                continue
            draft.questions.append(question)
    except csv.Error as exc:
        loader.error(str(file), "", f"CSV error: {exc}")
