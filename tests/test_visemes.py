"""The viseme inventory and its mouth shapes."""

from __future__ import annotations

import itertools

import pytest

from avatar.face_state import REST_MOUTH
from avatar.visemes import VISEME_SHAPES, Viseme

OCULUS = ["sil", "PP", "FF", "TH", "DD", "kk", "CH", "SS", "nn", "RR", "aa", "E", "ih", "oh", "ou"]


def test_inventory_is_the_15_oculus_visemes_in_order() -> None:
    assert [v.value for v in Viseme] == OCULUS
    assert Viseme("PP") is Viseme.PP
    assert Viseme.aa == "aa"  # a str enum: usable wherever the Oculus name is expected
    assert isinstance(Viseme.kk, str)


def test_every_viseme_has_a_shape_within_range() -> None:
    assert set(VISEME_SHAPES) == set(Viseme)
    for vis, shape in VISEME_SHAPES.items():
        o, w, r, p, tuck, tongue, teeth = shape.as_tuple()
        assert 0.0 <= o <= 1.0, vis
        assert -1.0 <= w <= 1.0, vis
        for value in (r, p, tuck, tongue, teeth):
            assert 0.0 <= value <= 1.0, vis


def test_shapes_are_pairwise_distinct() -> None:
    for (a, sa), (b, sb) in itertools.combinations(VISEME_SHAPES.items(), 2):
        distance = max(abs(x - y) for x, y in zip(sa.as_tuple(), sb.as_tuple(), strict=True))
        assert distance >= 0.1, f"{a} and {b} look alike"


def test_shapes_are_articulatorily_plausible() -> None:
    s = VISEME_SHAPES
    assert s[Viseme.sil] == REST_MOUTH
    assert s[Viseme.PP].press == 1.0 and s[Viseme.PP].open == 0.0
    assert s[Viseme.FF].tuck >= 0.8 and s[Viseme.FF].open <= 0.15
    assert s[Viseme.TH].tongue >= 0.8
    assert s[Viseme.SS].teeth >= 0.8 and s[Viseme.SS].open <= 0.15
    assert s[Viseme.aa].open >= 0.8
    assert s[Viseme.aa].open == max(shape.open for shape in s.values())
    for rounded in (Viseme.oh, Viseme.ou):
        assert s[rounded].round >= 0.5 and s[rounded].width < 0
    assert s[Viseme.ou].width < s[Viseme.oh].width  # "oo" is narrower than "oh"
    for spread in (Viseme.E, Viseme.ih):
        assert s[spread].width >= 0.4 and s[spread].round == 0.0
    # Jaw heights in the usual order.
    assert s[Viseme.aa].open > s[Viseme.oh].open > s[Viseme.E].open > s[Viseme.ih].open
    for consonant in (Viseme.PP, Viseme.FF, Viseme.DD, Viseme.SS, Viseme.nn, Viseme.CH):
        assert s[consonant].open < s[Viseme.ih].open


@pytest.mark.parametrize("vis", [v for v in Viseme if v is not Viseme.sil])
def test_only_silence_is_rest(vis: Viseme) -> None:
    assert VISEME_SHAPES[vis] != REST_MOUTH


def test_vowel_flag() -> None:
    assert {v for v in Viseme if v.is_vowel} == {Viseme.aa, Viseme.E, Viseme.ih, Viseme.oh, Viseme.ou}
