"""Phoneme -> viseme mapping and the co-articulated mouth track."""

from __future__ import annotations

import itertools
import math
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avatar.face_state import REST_MOUTH
from avatar.speech import lipsync
from avatar.speech.lipsync import MouthTrack, track_from_phonemes, viseme_for, visemes_of
from avatar.timeline import Phoneme, cover_exactly
from avatar.visemes import Viseme

V = Viseme
OPEN, WIDTH, ROUND, PRESS, TUCK = 0, 1, 2, 3, 4

# Recorded from Piper (en_US-joe-medium, include_alignments=True) for "Thank you, I would
# like to check my account balance.": one code point per symbol, with its sample count at 22050 Hz.
PIPER_ALIGNMENT = [
    ("^", 1024), ("θ", 768), ("ˈ", 1024), ("æ", 1024), ("ŋ", 512), ("k", 1024), (" ", 1024), ("j", 1792),
    ("u", 1280), ("ː", 1280), (",", 3584), (" ", 2048), ("a", 768), ("ɪ", 1024), (" ", 768), ("w", 768),
    ("ʊ", 768), ("d", 1024), (" ", 512), ("l", 768), ("ˈ", 768), ("a", 512), ("ɪ", 512), ("k", 512),
    (" ", 1024), ("t", 768), ("ə", 768), (" ", 512), ("t", 768), ("ʃ", 512), ("ˈ", 1024), ("ɛ", 1024),
    ("k", 768), (" ", 768), ("m", 512), ("a", 768), ("ɪ", 1280), (" ", 512), ("ɐ", 1536), ("k", 768),
    ("ˈ", 1024), ("a", 1024), ("ʊ", 1024), ("n", 768), ("t", 768), (" ", 1024), ("b", 512), ("ˈ", 1792),
    ("æ", 1280), ("l", 1792), ("ə", 1024), ("n", 2816), ("s", 1792), (".", 1536), ("$", 1280),
]  # fmt: skip

# Recorded from espeak-ng (voice "cmn", PHONEME events with IPA names, positions in ms) for
# "你好，我想查询一下我的账户余额。": espeak's own spelling of Mandarin, empty names included.
ESPEAK_CMN_EVENTS = [
    ("n", 0), ("i", 81), ("χ", 183), ("ˈɑu", 288), ("", 503), ("", 653), ("w", 653), ("ˈo", 743),
    ("", 849), ("ɕ", 861), ("ˈiɑ", 969), ("ŋ", 1118), ("", 1198), ("ts.h", 1210), ("ˈɑ", 1333),
    ("", 1477), ("ɕ", 1489), ("ˈyə", 1597), ("n", 1727), ("", 1818), ("j", 1818), ("i", 1899),
    ("ɕ", 1992), ("ˈiɑ", 2100), ("", 2250), ("w", 2250), ("ˈo", 2340), ("", 2457), ("t", 2496),
    ("ə", 2516), ("", 2593), ("ts.", 2605), ("ˈɑ", 2719), ("ŋ", 2867), ("", 2950), ("χ", 2962),
    ("ˈu", 3067), ("", 3240), ("j", 3240), ("ˈy", 3324), ("", 3436), ("ˈo-", 3436), ("", 3646),
]  # fmt: skip
ESPEAK_CMN_DURATION = 3.947


def piper_phonemes() -> tuple[list[Phoneme], float]:
    out, pos, sr = [], 0, 22050
    for symbol, n in PIPER_ALIGNMENT:
        out.append(Phoneme(symbol, pos / sr, (pos + n) / sr))
        pos += n
    return out, pos / sr


def espeak_cmn_phonemes() -> tuple[list[Phoneme], float]:
    out = []
    for k, (symbol, ms) in enumerate(ESPEAK_CMN_EVENTS):
        end = ESPEAK_CMN_EVENTS[k + 1][1] if k + 1 < len(ESPEAK_CMN_EVENTS) else ESPEAK_CMN_DURATION * 1000
        if end > ms:
            out.append(Phoneme(symbol or "_", ms / 1000, end / 1000))
    return cover_exactly(out, ESPEAK_CMN_DURATION), ESPEAK_CMN_DURATION


def timeline(*spec: tuple[str, float]) -> tuple[list[Phoneme], float]:
    """Phonemes from (symbol, duration) pairs, back to back from 0."""
    out, t = [], 0.0
    for symbol, d in spec:
        out.append(Phoneme(symbol, t, t + d))
        t += d
    return out, t


# ---------------------------------------------------------------------------------- mapping


@pytest.mark.parametrize(
    ("symbol", "expected"),
    [
        ("p", V.PP), ("b", V.PP), ("m", V.PP),
        ("f", V.FF), ("v", V.FF),
        ("θ", V.TH), ("ð", V.TH),
        ("t", V.DD), ("d", V.DD), ("ɾ", V.DD),
        ("k", V.kk), ("ɡ", V.kk), ("g", V.kk), ("ŋ", V.kk),
        ("tʃ", V.CH), ("dʒ", V.CH), ("ʃ", V.CH), ("ʒ", V.CH), ("t͡ʃ", V.CH),
        ("s", V.SS), ("z", V.SS),
        ("n", V.nn), ("l", V.nn), ("n̩", V.nn),
        ("ɹ", V.RR), ("ɚ", V.RR),
        ("ɑː", V.aa), ("ˈɑː", V.aa), ("a", V.aa), ("æ", V.aa), ("ˈʌ", V.aa), ("ɐ", V.aa),
        ("ɛ", V.E), ("ə", V.E), ("ˈɜː", V.E), ("ˈeɪ", V.E),
        ("i", V.ih), ("iː", V.ih), ("ɪ", V.ih), ("j", V.ih),
        ("oʊ", V.oh), ("ˌoʊ", V.oh), ("ɔː", V.oh),
        ("uː", V.ou), ("u", V.ou), ("ʊ", V.ou), ("w", V.ou),
        ("aɪ", V.aa), ("ˈaʊ", V.aa),  # diphthongs: the nucleus
        ("_", V.sil), ("", V.sil), (",", V.sil), (".", V.sil), (" ", V.sil), ("ˈ", V.sil), ("ː", V.sil),
    ],
)  # fmt: skip
def test_english_symbols(symbol: str, expected: Viseme) -> None:
    assert viseme_for(symbol, "en") is expected


@pytest.mark.parametrize(
    ("symbol", "expected"),
    [
        # espeak's own spellings (PHONEME events) and standard IPA, aspirated or not
        ("ts.h", V.CH), ("ts.", V.CH), ("s.", V.CH), ("ʈʂ", V.CH), ("ʈʂʰ", V.CH), ("ʂ", V.CH),
        ("tɕ", V.CH), ("tɕh", V.CH), ("tɕʰ", V.CH), ("ɕ", V.CH),
        ("ts", V.SS), ("tsh", V.SS), ("tsʰ", V.SS), ("s", V.SS),
        ("ʐ", V.RR), ("z.", V.RR), ("ər", V.RR), ("ˈərɜ", V.RR),
        ("x", V.kk), ("χ", V.kk), ("kh", V.kk), ("kʰ", V.kk), ("ŋ", V.kk),
        ("ph", V.PP), ("pʰ", V.PP), ("th", V.DD), ("f", V.FF),
        # tone-marked vowels: digits, tone letters and espeak's ɜ tone mark are dropped
        ("a1", V.aa), ("ɑ5", V.aa), ("ˈɑ", V.aa), ("ai2", V.aa), ("ˈɑu", V.aa), ("ˈiɑ", V.aa), ("a˥˩", V.aa),
        ("u3", V.ou), ("ˈu", V.ou), ("y", V.ou), ("ˈy", V.ou), ("ʏ", V.ou),
        ("ɤ", V.E), ("o-", V.E), ("ˈo-", V.E), ("ˈiɛ", V.E), ("ˈyə", V.E), ("ə5", V.E),
        ("ɨ", V.ih), ("i.", V.ih), ("i̪", V.ih), ("i2", V.ih),
        ("ˈo", V.oh), ("ˈuo", V.oh), ("ˈonɡ", V.oh),
        ("5", V.sil), ("ɜ", V.sil), ("", V.sil),
    ],
)  # fmt: skip
def test_mandarin_symbols(symbol: str, expected: Viseme) -> None:
    assert viseme_for(symbol, "zh") is expected
    assert viseme_for(symbol, "cmn") is expected


def test_er_vowel_is_a_tone_mark_only_in_mandarin() -> None:
    assert viseme_for("ɜ", "en") is V.E
    assert viseme_for("ɜ", "zh") is V.sil


@pytest.mark.parametrize("symbol", ["你", "ǂ", "ʘ", "*", "@@", "q̃", "ǃ", "\x00", "ⓧ", "🙂", "a\u0301"])
def test_unknown_symbols_map_to_a_viseme(symbol: str) -> None:
    assert isinstance(viseme_for(symbol, "en"), Viseme)
    assert isinstance(viseme_for(symbol, "zh"), Viseme)


def test_unknown_letters_map_by_their_base_letter() -> None:
    assert viseme_for("ḅ") is V.PP  # b with a dot below: not in any table
    assert viseme_for("ᵯ") is V.PP  # m with a middle tilde
    assert viseme_for("ä") is V.aa


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=6), st.sampled_from(["en", "zh", "cmn", "xx"]))
def test_any_text_maps_without_error(symbol: str, lang: str) -> None:
    assert isinstance(viseme_for(symbol, lang), Viseme)


def _espeak_words(voice: str, text: str) -> list[str]:
    bridge = pytest.importorskip("piper.espeakbridge")
    from piper.phonemize_espeak import ESPEAK_DATA_DIR

    bridge.initialize(str(ESPEAK_DATA_DIR))
    bridge.set_voice(voice)
    words: list[str] = []
    for phonemes, _terminator, _end in bridge.get_phonemes(text):
        words.extend(w for w in phonemes.split() if "(" not in w)  # skip language-switched words
    return words


@pytest.mark.parametrize(
    ("voice", "lang", "text"),
    [
        (
            "en-us",
            "en",
            "The quick brown fox jumps over the lazy dog. Measure the pleasure of judging church "
            "bottles, butter, water, hour, fire, near, poor, air, pure, tour, button. Thank you for "
            "calling; your account balance is thirty-two euros and nineteen cents.",
        ),
        (
            "cmn",
            "zh",
            "你好，我想查询一下我的账户余额。请问需要什么证件？谢谢，再见。中国银行客服热线。吃饭了吗，"
            "日本人，出租车，四十，是的，我们，女儿，绿色，学生，飞机，对不起，月亮，熊猫，窗户，水果。",
        ),
    ],
)
def test_every_symbol_espeak_writes_is_in_the_tables(voice: str, lang: str, text: str) -> None:
    """Whole words of espeak's IPA, parsed: no letter may fall through to the Unicode-name guess."""
    words = _espeak_words(voice, text)
    assert len(words) > 20
    for word in words:
        parsed = lipsync._parse(word, lang == "zh")
        assert parsed.kind == "speech", word
        assert not parsed.guessed, word


# ------------------------------------------------------------------------------ visemes_of


def test_piper_marks_fold_into_their_phonemes() -> None:
    phonemes, duration = piper_phonemes()
    segs = visemes_of(phonemes, "en")
    assert segs[0][1] == 0.0 and math.isclose(segs[-1][2], duration)
    for (_, _, end), (_, start, _) in itertools.pairwise(segs):
        assert math.isclose(end, start), "segments tile the chunk"
    for (a, _, _), (b, _, _) in itertools.pairwise(segs):
        assert a is not b, "equal neighbours are merged"
    # "ˈæ" is one aa segment starting where the stress mark started (after θ).
    th_end = (1024 + 768) / 22050
    aa = next(s for s in segs if s[0] is V.aa)
    assert math.isclose(aa[1], th_end)
    # "u" + "ː" is one ou segment covering both; "," is a pause.
    ou = next(s for s in segs if s[0] is V.ou)
    assert math.isclose(ou[2] - ou[1], (1280 + 1280) / 22050)
    assert segs[segs.index(ou) + 1][0] is V.sil
    # The space after the comma belongs to the pause: "I" starts where Piper starts it.
    i_start = sum(n for _, n in PIPER_ALIGNMENT[:12]) / 22050
    assert any(v is V.aa and math.isclose(start, i_start) for v, start, _ in segs)
    # Short word spaces are joins, not pauses: only the comma, the start and the end are silent.
    assert sum(1 for s in segs if s[0] is V.sil) == 3


def test_diphthongs_split_with_the_nucleus_longer() -> None:
    segs = visemes_of([Phoneme("ˈaɪ", 0.0, 0.3)], "en")
    assert [s[0] for s in segs] == [V.aa, V.ih]
    assert segs[0][2] - segs[0][1] > segs[1][2] - segs[1][1]
    rising = visemes_of([Phoneme("iɑ5", 0.0, 0.3)], "zh")
    assert [s[0] for s in rising] == [V.ih, V.aa]
    assert rising[1][2] - rising[1][1] > rising[0][2] - rising[0][1]
    triph = visemes_of([Phoneme("iɑu", 0.0, 0.3)], "zh")
    assert [s[0] for s in triph] == [V.ih, V.aa, V.ou]


def test_chained_marks_fold_into_one_phoneme() -> None:
    phonemes, _ = timeline(("ˈ", 0.05), ("u", 0.1), ("ː", 0.1), ("5", 0.05), ("_", 0.2))
    segs = visemes_of(phonemes, "zh")
    assert [s[0] for s in segs] == [V.ou, V.sil]
    assert segs[0][1] == 0.0 and math.isclose(segs[0][2], 0.3)


def test_long_word_space_is_a_pause() -> None:
    phonemes, _ = timeline(("ɑ", 0.2), (" ", 0.3), ("ɑ", 0.2))
    assert [s[0] for s in visemes_of(phonemes)] == [V.aa, V.sil, V.aa]


# --------------------------------------------------------------------------------- the track


def _tracks() -> list[tuple[str, MouthTrack, list[tuple[Viseme, float, float]]]]:
    out = []
    for name, (phonemes, duration), lang in (
        ("piper-en", piper_phonemes(), "en"),
        ("espeak-cmn", espeak_cmn_phonemes(), "cmn"),
    ):
        out.append((name, track_from_phonemes(phonemes, duration, lang), visemes_of(phonemes, lang)))
    return out


def test_track_covers_the_chunk_and_rests_at_both_ends() -> None:
    for name, track, _ in _tracks():
        assert track.rate == 100.0
        assert track.params.dtype == np.float32 and track.params.shape[1] == 7
        assert (len(track) - 1) / track.rate >= track.duration > (len(track) - 2) / track.rate, name
        assert track.mouth_at(0.0) == REST_MOUTH, name
        assert track.mouth_at(track.duration) == REST_MOUTH, name
        assert np.all(track.params[0] == 0.0)
    phonemes, duration = piper_phonemes()
    assert track_from_phonemes(phonemes, duration).duration == duration


def test_track_moves_continuously() -> None:
    for name, track, _ in _tracks():
        speed = np.abs(np.diff(track.params.astype(np.float64), axis=0)).max(axis=0) * track.rate
        # No parameter crosses its whole range faster than in about 35 ms.
        assert np.all(speed <= 30.0), (name, speed)
        assert track.params[:, OPEN].max() >= 0.6, name  # and it does move


def test_track_values_in_range() -> None:
    for name, track, _ in _tracks():
        p = track.params
        assert p[:, OPEN].min() >= 0.0 and p[:, OPEN].max() <= 1.0, name
        assert p[:, WIDTH].min() >= -1.0 and p[:, WIDTH].max() <= 1.0, name
        assert p[:, ROUND:].min() >= 0.0 and p[:, ROUND:].max() <= 1.0, name


def test_every_bilabial_closes_the_lips() -> None:
    seen = 0
    for name, track, segs in _tracks():
        for vis, start, end in segs:
            if vis is not V.PP:
                continue
            seen += 1
            inside = track.params[math.floor(start * 100) : math.ceil(end * 100) + 1]
            assert inside[:, OPEN].min() <= 0.02, (name, start)
            assert inside[:, PRESS].max() >= 0.98, (name, start)
    assert seen >= 2


def test_a_very_short_bilabial_between_open_vowels_still_closes() -> None:
    phonemes, duration = timeline(("_", 0.2), ("ɑ", 0.2), ("b", 0.025), ("ɑ", 0.2), ("_", 0.2))
    track = track_from_phonemes(phonemes, duration)
    window = track.params[40:47]
    assert window[:, OPEN].min() <= 0.02 and window[:, PRESS].max() >= 0.98
    assert track.params[30, OPEN] >= 0.5  # the vowels around it are open


def test_labiodental_tucks_the_lip() -> None:
    phonemes, duration = timeline(("_", 0.2), ("ɑ", 0.2), ("f", 0.08), ("ɑ", 0.2), ("_", 0.2))
    track = track_from_phonemes(phonemes, duration)
    assert track.params[40:49, TUCK].max() >= 0.8


def test_short_vowels_blend_into_their_neighbours() -> None:
    short, d1 = timeline(("_", 0.3), ("k", 0.08), ("ɑ", 0.03), ("k", 0.08), ("_", 0.3))
    long, d2 = timeline(("_", 0.3), ("k", 0.08), ("ɑ", 0.25), ("k", 0.08), ("_", 0.3))
    peak_short = track_from_phonemes(short, d1).params[:, OPEN].max()
    peak_long = track_from_phonemes(long, d2).params[:, OPEN].max()
    assert peak_long >= 0.75
    assert peak_short < peak_long - 0.15


def test_pauses_relax_to_rest() -> None:
    phonemes, duration = timeline(("ɑ", 0.3), ("_", 0.6), ("i", 0.3))
    track = track_from_phonemes(phonemes, duration)
    middle = track.mouth_at(0.6)
    assert max(abs(x) for x in middle.as_tuple()) <= 0.03
    assert track.open_at(0.15) >= 0.6


def test_lips_round_ahead_of_a_rounded_vowel() -> None:
    phonemes, duration = timeline(("_", 0.3), ("t", 0.1), ("uː", 0.25), ("_", 0.3))
    track = track_from_phonemes(phonemes, duration)
    assert track.mouth_at(0.37).round >= 0.3  # during the t, before the vowel starts at 0.4
    spread, _ = timeline(("_", 0.3), ("t", 0.1), ("iː", 0.25), ("_", 0.3))
    assert track_from_phonemes(spread, duration).mouth_at(0.37).width > 0.2  # same t, spread lips


def test_tracks_follow_the_requested_rate() -> None:
    phonemes, duration = piper_phonemes()
    fast = track_from_phonemes(phonemes, duration, rate=200.0)
    slow = track_from_phonemes(phonemes, duration, rate=100.0)
    assert len(fast) == math.ceil(duration * 200) + 1
    times = np.linspace(0.2, duration - 0.2, 50)
    assert np.abs(fast.params_at(times) - slow.params_at(times)).max() <= 0.1


def test_silence_and_empty_timelines_give_a_rest_track() -> None:
    for phonemes in ([], [Phoneme("_", 0.0, 1.0)], [Phoneme(",", 0.0, 0.5), Phoneme("ˈ", 0.5, 1.0)]):
        track = track_from_phonemes(phonemes, 1.0)
        assert track.duration == 1.0
        assert not track.params.any()
    zero = track_from_phonemes([], 0.0)
    assert len(zero) == 1 and zero.mouth_at(0.0) == REST_MOUTH


def test_gaps_and_overruns_are_tolerated() -> None:
    phonemes = [Phoneme("ɑ", 0.2, 0.5), Phoneme("m", 0.5, 0.6), Phoneme("ɑ", 0.9, 1.6)]
    track = track_from_phonemes(phonemes, 1.2)
    assert track.duration == 1.2
    assert track.mouth_at(1.2) == REST_MOUTH
    assert track.open_at(0.35) >= 0.5


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.text(min_size=0, max_size=4), st.floats(min_value=0.001, max_value=0.4)),
        max_size=30,
    ),
    st.sampled_from(["en", "zh"]),
)
def test_any_timeline_gives_a_valid_track(spec: list[tuple[str, float]], lang: str) -> None:
    phonemes, duration = timeline(*spec)
    track = track_from_phonemes(phonemes, duration, lang)
    assert np.isfinite(track.params).all()
    assert track.mouth_at(0.0) == REST_MOUTH and track.mouth_at(duration) == REST_MOUTH
    assert track.params[:, OPEN].min() >= 0.0 and track.params[:, OPEN].max() <= 1.0


def test_bad_arguments_are_reported() -> None:
    with pytest.raises(ValueError, match="duration"):
        track_from_phonemes([], -1.0)
    with pytest.raises(ValueError, match="rate"):
        track_from_phonemes([], 1.0, rate=0.0)
    with pytest.raises(ValueError, match="shape"):
        MouthTrack(np.zeros((3, 6)), 100.0, 0.02)


# ----------------------------------------------------------------------- MouthTrack lookups


def test_mouth_at_interpolates_and_clamps() -> None:
    params = np.zeros((3, 7), np.float32)
    params[1] = (1.0, -1.0, 0.5, 0.0, 0.0, 0.0, 0.8)
    track = MouthTrack(params, rate=100.0, duration=0.02)
    assert track.mouth_at(0.01).as_tuple() == pytest.approx((1.0, -1.0, 0.5, 0.0, 0.0, 0.0, 0.8))
    half = track.mouth_at(0.005)
    assert half.open == pytest.approx(0.5) and half.width == pytest.approx(-0.5)
    assert track.mouth_at(0.015).round == pytest.approx(0.25)
    assert track.open_at(0.0075) == pytest.approx(0.75)
    for outside in (-0.001, 0.0201, 5.0, -math.inf, math.nan):
        assert track.mouth_at(outside) == REST_MOUTH
        assert track.open_at(outside) == 0.0
    times = np.array([-1.0, 0.0, 0.005, 0.01, 0.015, 0.02, 3.0])
    rows = track.params_at(times)
    for t, row in zip(times, rows, strict=True):
        assert row.tolist() == pytest.approx(track.mouth_at(float(t)).as_tuple())


def test_mouth_at_past_the_last_sample_holds_it() -> None:
    params = np.ones((2, 7), np.float32) * 0.5
    track = MouthTrack(params, rate=100.0, duration=0.01)
    assert track.mouth_at(0.01).open == 0.5


def test_cost_of_a_ten_second_chunk(capsys: pytest.CaptureFixture[str]) -> None:
    """Prints the cost (speed is benchmarked, not asserted); asserts the long track is sound."""
    base, duration = piper_phonemes()
    phonemes: list[Phoneme] = []
    offset = 0.0
    while offset < 10.0:
        phonemes += [Phoneme(p.symbol, p.start + offset, p.end + offset) for p in base]
        offset += duration
    start = time.perf_counter()
    track = track_from_phonemes(phonemes, offset)
    build_ms = (time.perf_counter() - start) * 1000
    rng = np.random.default_rng(0)
    times = rng.uniform(0, offset, 2000).tolist()
    start = time.perf_counter()
    for t in times:
        track.mouth_at(t)
    lookup_us = (time.perf_counter() - start) / len(times) * 1e6
    with capsys.disabled():
        print(
            f"\n[lipsync] {offset:.1f} s, {len(phonemes)} phonemes: build {build_ms:.2f} ms, mouth_at {lookup_us:.2f} µs"
        )
    assert len(track) == math.ceil(offset * 100) + 1
    bilabials = sum(1 for p in phonemes if p.symbol in ("m", "b", "p"))
    assert sum(1 for v, _, _ in visemes_of(phonemes) if v is V.PP) == bilabials


def test_cover_exactly_closes_float_rounding_gaps() -> None:
    """Timings shifted and rescaled when parts are joined (a mixed-language sentence) can leave
    a gap of a few ulps between neighbours: the tiling has none, and inserts no sliver of silence."""
    a_end = 1.8973696145124714
    phonemes = [Phoneme("a", 0.0, a_end), Phoneme("_", a_end + 3e-16, 1.9063900226757369)]
    covered = cover_exactly(phonemes, 1.9063900226757369)
    assert [p.symbol for p in covered] == ["a", "_"]
    assert covered[1].start == covered[0].end
    # A real gap still becomes silence.
    gapped = cover_exactly([Phoneme("a", 0.0, 0.5), Phoneme("b", 0.6, 1.0)], 1.0)
    assert [(p.symbol, p.start, p.end) for p in gapped] == [("a", 0.0, 0.5), ("_", 0.5, 0.6), ("b", 0.6, 1.0)]
