"""Inbound audio: the streaming resampler and Silero VAD on synthesised speech, silence and noise."""

from __future__ import annotations

import wave
from math import gcd
from pathlib import Path

import numpy as np
import pytest
from scipy.signal import resample_poly

from avatar.speech.resample import StreamResampler, resample, to_mono
from avatar.speech.vad import WINDOW, VadFrame, VoiceActivityDetector

SPEECH = Path(__file__).parent / "data" / "speech"


def clip(name: str) -> np.ndarray:
    with wave.open(str(SPEECH / f"{name}.wav"), "rb") as wav:
        assert wav.getframerate() == 16_000 and wav.getnchannels() == 1
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.int16)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * 16_000), dtype=np.int16)


@pytest.fixture(scope="module")
def detector() -> VoiceActivityDetector:
    return VoiceActivityDetector()


def run(detector: VoiceActivityDetector, audio: np.ndarray, start: float = 0.0, chunk: int = 320) -> list[VadFrame]:
    stream = detector.stream(start)
    frames: list[VadFrame] = []
    for i in range(0, len(audio), chunk):
        frames += stream.push(audio[i : i + chunk])
    return frames


# -- resampling ------------------------------------------------------------------------


@pytest.mark.parametrize(("rate", "channels"), [(48_000, 1), (48_000, 2), (44_100, 1), (22_050, 1), (8_000, 1)])
def test_streaming_resampler_equals_whole_buffer_and_resample_poly(rate: int, channels: int) -> None:
    rng = np.random.default_rng(rate + channels)
    pcm = (rng.standard_normal(rate * channels // 2) * 4000).astype(np.int16)  # 0.5 s
    frame = rate // 50 * channels  # 20 ms, as WebRTC delivers
    rs = StreamResampler()
    streamed = np.concatenate([rs.push(pcm[i : i + frame], rate, channels) for i in range(0, len(pcm), frame)] + [rs.flush()])
    whole = resample(pcm, rate, channels=channels)
    g = gcd(16_000, rate)
    reference = resample_poly(to_mono(pcm, channels), 16_000 // g, rate // g)
    assert streamed.dtype == np.int16
    assert len(streamed) == len(whole) == len(reference) == 8_000
    assert np.array_equal(streamed, whole)  # frame edges change nothing
    assert np.abs(whole - reference).max() <= 0.5 + 1e-6  # only int16 rounding


def test_resampler_keeps_tone_time_aligned() -> None:
    # A 440 Hz tone at 48 kHz comes out as the same tone at 16 kHz, in phase (no delay).
    t48 = np.arange(48_000) / 48_000
    tone = (10_000 * np.sin(2 * np.pi * 440 * t48)).astype(np.int16)
    out = resample(tone, 48_000)
    t16 = np.arange(16_000) / 16_000
    expected = 10_000 * np.sin(2 * np.pi * 440 * t16)
    middle = slice(100, -100)  # away from the zero-padded edges
    assert np.abs(out[middle] - expected[middle]).max() < 40


def test_resampler_rate_change_flushes_and_restarts() -> None:
    rs = StreamResampler()
    first = rs.push(np.full(4_800, 1000, np.int16), 48_000)
    switched = rs.push(np.full(2_205, 1000, np.int16), 22_050)  # flush of the 48 kHz part + new rate
    rest = rs.flush()
    assert rs.in_rate == 22_050
    assert len(first) + len(switched) + len(rest) == 1_600 + 1_600


def test_to_mono_rejects_ragged_stereo() -> None:
    with pytest.raises(ValueError, match="2 interleaved channels"):
        to_mono(np.zeros(5, np.int16), 2)


# -- VAD -------------------------------------------------------------------------------


def test_speech_scores_high_silence_and_noise_low(detector: VoiceActivityDetector) -> None:
    speech = clip("activate_card")
    frames = run(detector, np.concatenate([silence(0.5), speech, silence(0.5)]))
    probs = np.array([f.probability for f in frames])
    times = np.array([f.start for f in frames])
    inside = (times > 0.6) & (times < 0.5 + len(speech) / 16_000 - 0.2)
    assert probs[inside].mean() > 0.8
    assert probs[times < 0.45].max() < 0.1

    assert max(f.probability for f in run(detector, silence(2.0))) < 0.1

    rng = np.random.default_rng(7)
    white = (rng.standard_normal(32_000) * 32768 * 10 ** (-30 / 20)).astype(np.int16)  # -30 dBFS
    hum = (3000 * np.sin(2 * np.pi * 50 * np.arange(32_000) / 16_000)).astype(np.int16)
    assert max(f.probability for f in run(detector, white)) < 0.5
    assert max(f.probability for f in run(detector, hum)) < 0.5


def test_speech_in_noise_is_still_speech(detector: VoiceActivityDetector) -> None:
    rng = np.random.default_rng(3)
    speech = clip("account_balance").astype(np.float64)
    noisy = speech + rng.standard_normal(speech.size) * 32768 * 10 ** (-40 / 20)
    frames = run(detector, np.clip(noisy, -32768, 32767).astype(np.int16))
    assert sum(f.probability > 0.5 for f in frames) >= 0.6 * len(frames)


def test_frames_are_timestamped_windows_whatever_the_chunking(detector: VoiceActivityDetector) -> None:
    audio = np.concatenate([silence(0.3), clip("uh_huh"), silence(0.3)])
    by_20ms = run(detector, audio, start=12.5, chunk=320)
    by_odd = run(detector, audio, start=12.5, chunk=777)
    assert len(by_20ms) == len(by_odd) == len(audio) // WINDOW
    for a, b in zip(by_20ms, by_odd, strict=True):
        assert a.start == b.start and a.probability == b.probability
        assert np.array_equal(a.audio, b.audio) and a.audio.size == WINDOW
    assert by_20ms[0].start == 12.5
    assert by_20ms[10].start == pytest.approx(12.5 + 10 * 0.032)
    assert by_20ms[10].end == pytest.approx(by_20ms[11].start)


def test_shared_engine_keeps_streams_apart(detector: VoiceActivityDetector) -> None:
    # Two customers on one engine, interleaved: each gets exactly what it would alone.
    a = np.concatenate([clip("activate_card"), silence(0.3)])
    b = np.concatenate([silence(0.4), clip("account_balance")])
    alone_a, alone_b = run(detector, a), run(detector, b)
    sa, sb = detector.stream(), detector.stream()
    mixed_a: list[VadFrame] = []
    mixed_b: list[VadFrame] = []
    for i in range(0, max(len(a), len(b)), 320):
        mixed_a += sa.push(a[i : i + 320])
        mixed_b += sb.push(b[i : i + 320])
    assert [f.probability for f in mixed_a] == [f.probability for f in alone_a]
    assert [f.probability for f in mixed_b] == [f.probability for f in alone_b]


def test_gap_in_delivery_reanchors_the_clock(detector: VoiceActivityDetector) -> None:
    stream = detector.stream(0.0)
    first = stream.push(silence(0.1))  # 3 windows, 64 samples pending
    assert [f.start for f in first] == pytest.approx([0.0, 0.032, 0.064])
    later = stream.push(silence(0.064), t=5.0)  # audio resumes 5 s in: the partial window is dropped
    assert [f.start for f in later] == pytest.approx([5.0, 5.032])
    assert stream.next_time == pytest.approx(5.064)
    assert stream.push(silence(0.032), t=5.064)[0].start == pytest.approx(5.064)  # contiguous: kept


def test_webrtc_frames_through_resampler_and_vad(detector: VoiceActivityDetector) -> None:
    # 48 kHz stereo 20 ms frames (as aiortc hands them over) -> 16 kHz mono -> speech found.
    speech48 = resample(np.concatenate([silence(0.4), clip("activate_card"), silence(0.4)]), 16_000, 48_000)
    stereo = np.repeat(speech48, 2).reshape(1, -1)  # packed s16, shape (1, n * 2)
    rs = StreamResampler()
    stream = detector.stream(0.0)
    frames: list[VadFrame] = []
    for i in range(0, stereo.shape[1], 1920):
        frames += stream.push(rs.push(stereo[:, i : i + 1920], 48_000, channels=2))
    speech_starts = [f.start for f in frames if f.probability > 0.5]
    assert speech_starts and 0.38 <= speech_starts[0] <= 0.5


def test_push_rejects_float_audio(detector: VoiceActivityDetector) -> None:
    with pytest.raises(ValueError, match="int16"):
        detector.stream().push(np.zeros(512, np.float32))
