"""Where the sound of the customer's speech ends (``avatar.speech.level``), on recorded speech
through the real Silero VAD: the first quiet window comes well before the VAD's end of speech,
and what counts as quiet follows the line's noise and the speaker's voice."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from avatar.server.engines import Engines
from avatar.speech.level import SoundLevel, window_rms
from avatar.speech.vad import WINDOW, VadFrame, VoiceActivityDetector

SPEECH = Path(__file__).parent / "data" / "speech"
NEG = 0.35  # the endpointer's silence threshold


def clip(name: str) -> np.ndarray:
    with wave.open(str(SPEECH / f"{name}.wav"), "rb") as wav:
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.int16)


def frame(audio: np.ndarray, k: int = 0) -> VadFrame:
    return VadFrame(k * 0.032, (k + 1) * 0.032, 0.0, audio)


@pytest.fixture(scope="module")
def vad(engines: Engines) -> VoiceActivityDetector:
    return engines.vad()


def test_window_rms() -> None:
    assert window_rms(np.zeros(0, np.int16)) == 0.0
    assert window_rms(np.full(WINDOW, -1000, np.int16)) == pytest.approx(1000.0)


@pytest.mark.parametrize("name", ["activate_card", "account_balance", "lost_card", "stop_please"])
def test_the_sound_ends_before_the_vad_stops_calling_speech(vad: VoiceActivityDetector, name: str) -> None:
    rng = np.random.default_rng(3)
    speech = clip(name)
    audio = np.concatenate([np.zeros(8000, np.int16), speech, np.zeros(16000, np.int16)])
    audio = (audio + rng.standard_normal(audio.size) * 5).astype(np.int16)  # a quiet line
    loud = np.flatnonzero(np.abs(audio.astype(np.int32)) > 300)
    sound_end = (loud[-1] + 1) / 16_000
    level = SoundLevel()
    frames = vad.stream(0.0).push(audio)
    quiet = [level.push(f, f.probability >= NEG) for f in frames]
    voiced = [f.probability >= NEG for f in frames]
    last_loud = max(k for k, f in enumerate(frames) if voiced[k] and not quiet[k])
    first_quiet = frames[last_loud + 1]
    first_silent = next(f for k, f in enumerate(frames) if k > last_loud and not voiced[k])
    # The first quiet window follows the last loud sample within two windows...
    assert sound_end <= first_quiet.end <= sound_end + 2 * 0.032 + 1e-9
    # ...while Silero's decay tail still calls speech there.
    assert first_silent.end > first_quiet.end
    assert voiced[last_loud + 1]


def test_quiet_follows_the_noise_of_the_line() -> None:
    rng = np.random.default_rng(5)
    level = SoundLevel()
    noise = [(rng.standard_normal(WINDOW) * 300).astype(np.int16) for _ in range(300)]
    for k, window in enumerate(noise):
        level.push(frame(window, k), voiced=False)
    assert level.noise is not None and 250 < level.noise < 350
    assert level.quiet_below == pytest.approx(3.0 * level.noise)
    assert level.push(frame(noise[-1]), voiced=True)  # the line's own noise is quiet
    speech = (np.sin(np.arange(WINDOW) / 5.0) * 3000).astype(np.int16)
    assert not level.push(frame(speech), voiced=True)


def test_one_loud_noise_does_not_lift_the_noise_floor() -> None:
    level = SoundLevel()
    hum = np.full(WINDOW, 10, np.int16)
    for k in range(10):
        level.push(frame(hum, k), voiced=False)
    level.push(frame(np.full(WINDOW, 8000, np.int16), 10), voiced=False)  # a door slams
    assert level.noise is not None and level.noise < 11
    assert level.quiet_below == level.floor
    level.push(frame(np.zeros(WINDOW, np.int16), 11), voiced=False)
    assert level.noise == 0.0  # a quieter moment is the floor at once


def test_quiet_is_far_below_a_loud_talkers_voice() -> None:
    level = SoundLevel()
    shout = (np.sin(np.arange(WINDOW) / 4.0) * 20000).astype(np.int16)
    for k in range(20):
        assert not level.push(frame(shout, k), voiced=True)
    fading = np.full(WINDOW, 200, np.int16)  # above the floor, far below this voice
    assert level.push(frame(fading, 20), voiced=True)
    assert not SoundLevel().push(frame(fading), voiced=True)  # for an unknown voice it is sound


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        SoundLevel(floor=0)
    with pytest.raises(ValueError):
        SoundLevel(speech_ratio=1.5)
    with pytest.raises(ValueError):
        SoundLevel(noise_rise=0)
