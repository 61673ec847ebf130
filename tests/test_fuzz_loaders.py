"""Property-based fuzzing of the loaders that read users' files: knowledge bases (YAML and CSV),
avatar rigs and the configuration (TOML and ``AVATAR_*`` variables). The property: a file either
loads or is refused with the loader's own error (which names the file and field), never any other
exception. Besides random text, the fuzzer edits the shipped files structurally (a value replaced
by any other), which reaches the validation code far more often than noise does."""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from avatar.brain.kb import KBError, load_kb
from avatar.config import ConfigError, load_settings
from avatar.face_state import FaceState
from avatar.render.catalog import default_assets_dir
from avatar.render.illustrated import IllustratedRenderer
from avatar.render.rig import RigError, load_rig
from tests.fuzz_strategies import json_values

FUZZ = settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

RIG = yaml.safe_load((default_assets_dir() / "avatars" / "anna" / "rig.yaml").read_text(encoding="utf-8"))
KB_YAML = """\
lang: en
notices:
  risk: Investments can lose value.
products:
  - id: cards
    name: Cards
    scenarios:
      - id: lost
        name: Lost cards
        entries:
          - id: lost_card
            questions: [I lost my card, my card is gone]
            answer: Freeze it in the app, then order a new one.
            handoff: false
          - id: invest
            questions: [which fund should I buy]
            answer: Our advisers can explain the funds.
            risk_notice: true
"""
KB_CSV = "id,question,answer,lang\nlost_card,I lost my card,Freeze it in the app.,en\nlost_card,my card is gone,,en\n"


def paths_in(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value in a YAML document (dict keys and list indices)."""
    out = [prefix]
    if isinstance(doc, dict):
        for key, value in doc.items():
            out += paths_in(value, (*prefix, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            out += paths_in(value, (*prefix, i))
    return out


@st.composite
def edited(draw: st.DrawFn, doc: Any) -> Any:
    """``doc`` with one to three values replaced by arbitrary JSON, or removed."""
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in paths_in(doc) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        if draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(json_values)
    return doc


def write(text: str, suffix: str) -> Path:
    handle = tempfile.NamedTemporaryFile("w", suffix=suffix, delete=False, encoding="utf-8", errors="surrogatepass")
    with handle:
        handle.write(text)
    return Path(handle.name)


def loads_or_refuses(load: Any, path: Path, error: type[Exception]) -> None:
    try:
        load(path)
    except error as exc:
        assert str(exc), "the error must say what is wrong"
    finally:
        path.unlink(missing_ok=True)


@FUZZ
@given(doc=edited(yaml.safe_load(KB_YAML)))
def test_kb_yaml_edits(doc: Any) -> None:
    loads_or_refuses(load_kb, write(yaml.safe_dump(doc, allow_unicode=True), ".yaml"), KBError)


@FUZZ
@given(text=st.text(max_size=300) | st.just(KB_YAML).map(lambda t: t.replace(":", "", 1)))
def test_kb_yaml_text(text: str) -> None:
    loads_or_refuses(load_kb, write(text, ".yaml"), KBError)


@FUZZ
@given(
    rows=st.lists(st.lists(st.text(max_size=12).filter(lambda t: "\x00" not in t), max_size=5), max_size=6),
    header=st.sampled_from(["id,question,answer,lang", "id,question,answer", "question,id", ""]),
    noise=st.text(max_size=40),
)
def test_kb_csv(rows: list[list[str]], header: str, noise: str) -> None:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    for row in rows:
        writer.writerow(row)
    for text in (f"{header}\n{buffer.getvalue()}", KB_CSV + noise, noise):
        loads_or_refuses(load_kb, write(text, ".csv"), KBError)


@settings(FUZZ, max_examples=80)
@given(doc=edited(RIG))
def test_rig_edits(doc: Any) -> None:
    """An edited rig is refused with an error naming the file, or it loads and draws: a rig that
    passes validation must never fail later, in a live session's render thread."""
    path = write(yaml.safe_dump(doc, allow_unicode=True), ".yaml")
    try:
        rig = load_rig(path)
    except RigError as exc:
        assert str(path) in str(exc)  # the error names the file
        return
    finally:
        path.unlink(missing_ok=True)
    renderer = IllustratedRenderer(rig, 128, 128)
    frame = renderer.render(FaceState())
    assert frame.shape[:2] == (128, 128)


@FUZZ
@given(text=st.text(max_size=200))
def test_rig_text(text: str) -> None:
    loads_or_refuses(load_rig, write(text, ".yaml"), RigError)


_KEYS = ["port", "fps", "width", "height", "max_sessions", "video_codec", "voices", "ice_servers",
         "end_of_turn", "driver", "default_avatar", "max_body_bytes", "nonsense", "takeover_cut"]


@FUZZ
@given(values=st.dictionaries(st.sampled_from(_KEYS), json_values.filter(lambda v: v is not None), max_size=4))
def test_config_toml_values(values: dict[str, Any]) -> None:
    # TOML has no null; JSON strings are valid TOML basic strings, so json.dumps writes each value.
    def toml_value(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, dict):
            return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items() if v is not None) + "}"
        if isinstance(value, list):
            return "[" + ", ".join(toml_value(v) for v in value if v is not None) + "]"
        return json.dumps(value)

    text = "".join(f"{key} = {toml_value(value)}\n" for key, value in values.items())
    loads_or_refuses(lambda p: load_settings(p, env={}), write(text, ".toml"), ConfigError)


@FUZZ
@given(env=st.dictionaries(st.sampled_from(_KEYS), st.text(max_size=20), max_size=4))
def test_config_environment(env: dict[str, str]) -> None:
    try:
        load_settings(env={f"AVATAR_{k.upper()}": v for k, v in env.items()})
    except ConfigError as exc:
        assert str(exc)
