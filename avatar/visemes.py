"""Visemes: the mouth shapes speech is drawn with.

The inventory is the 15 visemes of the Oculus/Meta lip-sync set, which most avatar rigs
and viseme-driven renderers already understand. Each viseme has one target
``MouthShape``; lip-sync (``avatar.speech.lipsync``) blends these targets over time, so a
target is the shape the mouth heads for in the middle of a clearly articulated
phoneme, not what every frame shows.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType

from avatar.face_state import REST_MOUTH, MouthShape


class Viseme(StrEnum):
    """One of the 15 Oculus visemes. The value is the Oculus name (``"PP"``, ``"aa"``...)."""

    sil = "sil"  # silence, mouth at rest
    PP = "PP"  # p b m: lips pressed together
    FF = "FF"  # f v: lower lip under the upper teeth
    TH = "TH"  # θ ð: tongue tip between the teeth
    DD = "DD"  # t d: tongue on the ridge behind the teeth
    kk = "kk"  # k g ŋ: back of the tongue raised, jaw a little open
    CH = "CH"  # tʃ dʒ ʃ ʒ, Mandarin zh ch sh j q x: lips forward, teeth showing
    SS = "SS"  # s z, Mandarin z c s: teeth almost together, lips spread
    nn = "nn"  # n l: tongue tip up, jaw a little open
    RR = "RR"  # r ɹ ɚ, Mandarin r er: lips slightly rounded
    aa = "aa"  # a ɑ æ: jaw wide open
    E = "E"  # e ɛ ə: half open, lips spread
    ih = "ih"  # i ɪ: narrow opening, lips spread
    oh = "oh"  # o ɔ: open and rounded
    ou = "ou"  # u ʊ w y(ü): small rounded opening, lips pushed forward

    @property
    def is_vowel(self) -> bool:
        return self in _VOWELS


_VOWELS = frozenset({Viseme.aa, Viseme.E, Viseme.ih, Viseme.oh, Viseme.ou})

# Why these numbers: openings are ordered as jaw heights are (aa > oh > E > ih > ou, consonants
# below the vowels, PP shut); width is negative for rounded lips; teeth show for sibilants and
# spread vowels and hide behind rounded lips. Each shape differs from every other one in at
# least one feature a renderer draws, so no two visemes look alike.
VISEME_SHAPES: Mapping[Viseme, MouthShape] = MappingProxyType(
    {
        Viseme.sil: REST_MOUTH,
        Viseme.PP: MouthShape(open=0.0, width=0.0, round=0.0, press=1.0),
        Viseme.FF: MouthShape(open=0.08, width=0.1, tuck=1.0, teeth=0.6),
        Viseme.TH: MouthShape(open=0.22, width=0.05, tongue=1.0, teeth=0.5),
        Viseme.DD: MouthShape(open=0.2, width=0.1, tongue=0.5, teeth=0.4),
        Viseme.kk: MouthShape(open=0.3, width=0.05, teeth=0.25),
        Viseme.CH: MouthShape(open=0.15, width=-0.3, round=0.6, teeth=0.8),
        Viseme.SS: MouthShape(open=0.1, width=0.35, teeth=1.0),
        Viseme.nn: MouthShape(open=0.18, width=0.1, tongue=0.6, teeth=0.25),
        Viseme.RR: MouthShape(open=0.22, width=-0.35, round=0.5, teeth=0.2),
        Viseme.aa: MouthShape(open=0.9, width=0.1, teeth=0.35),
        Viseme.E: MouthShape(open=0.5, width=0.5, teeth=0.45),
        Viseme.ih: MouthShape(open=0.3, width=0.7, teeth=0.5),
        Viseme.oh: MouthShape(open=0.6, width=-0.5, round=0.65, teeth=0.15),
        Viseme.ou: MouthShape(open=0.28, width=-0.85, round=1.0, teeth=0.05),
    }
)
