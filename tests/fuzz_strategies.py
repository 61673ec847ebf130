"""Hypothesis strategies shared by the fuzz tests: arbitrary JSON, JSON objects that look almost
right (known keys with values of any type), and SDP offers mutated line by line."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hypothesis import strategies as st

_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30)

#: Any JSON document (floats without NaN: json.dumps would write a non-standard token).
json_values: st.SearchStrategy[Any] = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


def object_with(fields: Mapping[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects carrying some of ``fields``, each with its plausible value or any JSON value, plus
    maybe an unknown key: the shapes a confused client sends."""

    def build(draw: st.DrawFn) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, plausible in fields.items():
            if draw(st.booleans()):
                out[name] = draw(plausible | json_values)
        if draw(st.booleans()):
            out[draw(st.text(max_size=8))] = draw(json_values)
        return out

    return st.composite(build)()


def mutated_sdp(sdp: str) -> st.SearchStrategy[str]:
    """``sdp`` with a few of its lines dropped, duplicated, swapped, truncated or replaced by
    junk, and maybe its line endings changed."""
    lines = sdp.strip("\r\n").split("\r\n")

    def build(draw: st.DrawFn) -> str:
        out = list(lines)
        for _ in range(draw(st.integers(1, 4))):
            if not out:
                break
            i = draw(st.integers(0, len(out) - 1))
            op = draw(st.sampled_from(["drop", "dup", "junk", "cut", "swap", "value"]))
            if op == "drop":
                del out[i]
            elif op == "dup":
                out.insert(i, out[i])
            elif op == "junk":
                out[i] = draw(st.text(max_size=40).filter(lambda t: "\r" not in t and "\n" not in t))
            elif op == "cut":
                out[i] = out[i][: draw(st.integers(0, len(out[i])))]
            elif op == "swap":
                j = draw(st.integers(0, len(out) - 1))
                out[i], out[j] = out[j], out[i]
            else:  # keep the key, change a value: ports, payload types, fingerprints
                key, _, _rest = out[i].partition("=")
                value = draw(st.sampled_from(["", "0", "-1", "99999999999", "a b c", "UDP/TLS/RTP/SAVPF 0"]))
                out[i] = f"{key}={value}"
        if not out or not out[0].startswith("v=0"):
            out.insert(0, "v=0")  # past the route's own first check, into aiortc's parser
        ending = draw(st.sampled_from(["\r\n", "\n"]))
        return ending.join(out) + ending

    return st.composite(build)()
