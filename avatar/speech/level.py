"""Loudness of the customer's 32 ms windows: where the sound of their speech ends.

Silero VAD keeps calling speech for about 40-140 ms after the last loud sample of an
utterance (its recurrent state decays over two to four windows; measured on the benchmark's
twenty questions: 75 ms median). The first window that is *quiet* after loud speech is the
earliest sign that the customer may be done, so the listener starts recognising there and
counts the end-of-turn silence from the end of the sound, not from Silero's end of speech.
Silero still decides what is speech: a quiet window is only taken as the end of the sound
when the windows before it were loud *and* voiced (a door or a keyboard is loud, not voiced).

A window is quiet when its RMS is below all of: ``floor`` (about -55 dBFS, the level of
Opus-coded silence and a quiet room), ``noise_factor`` times the line's noise floor, and
``speech_ratio`` times the customer's speech level. The noise floor follows the windows the
VAD calls silence: it drops at once to a quieter one and rises slowly (by at most
``noise_rise`` per window: twice as loud takes about 0.7 s), so one loud noise does not lift it. The speech level is a
running mean over voiced windows that are not quiet.

Pure and clock-free: one per customer stream, fed every window in order.
"""

from __future__ import annotations

import math

import numpy as np

from avatar.speech.vad import VadFrame


def window_rms(audio: np.ndarray) -> float:
    """Root mean square of int16 ``audio`` (0 for an empty window)."""
    if audio.size == 0:
        return 0.0
    samples = audio.astype(np.float64)
    return math.sqrt(float(np.dot(samples, samples)) / samples.size)


class SoundLevel:
    """Per-stream loudness tracker (see the module docstring).

    ``push(frame, voiced)`` returns whether the window is quiet; ``voiced`` is the VAD's
    call for it (the endpointer's silence threshold, so the two agree on what is silence).
    """

    def __init__(
        self,
        *,
        floor: float = 60.0,
        noise_factor: float = 3.0,
        speech_ratio: float = 0.025,
        noise_rise: float = 0.03,
        speech_smoothing: float = 0.1,
    ) -> None:
        if floor <= 0 or noise_factor <= 0 or not 0 < speech_ratio < 1:
            raise ValueError("SoundLevel needs a positive floor and noise factor, and 0 < speech_ratio < 1")
        if not 0 < noise_rise <= 1 or not 0 < speech_smoothing <= 1:
            raise ValueError("SoundLevel's noise_rise and speech_smoothing must be within (0, 1]")
        self.floor = floor
        self.noise_factor = noise_factor
        self.speech_ratio = speech_ratio
        self.noise_rise = noise_rise
        self.speech_smoothing = speech_smoothing
        self.noise: float | None = None  # RMS of the line between speech
        self.speech: float | None = None  # RMS of the customer's voice

    @property
    def quiet_below(self) -> float:
        """The RMS under which a window counts as quiet now."""
        threshold = self.floor
        if self.noise is not None:
            threshold = max(threshold, self.noise_factor * self.noise)
        if self.speech is not None:
            # Quiet means far below this speaker's voice: a loud talker's fading last sound
            # is the end of their speech, not more of it.
            threshold = max(threshold, self.speech_ratio * self.speech)
        return threshold

    def push(self, frame: VadFrame, voiced: bool) -> bool:
        """Take one window (in order); return whether it is quiet."""
        rms = window_rms(frame.audio)
        quiet = rms < self.quiet_below
        if not voiced:
            if self.noise is None or rms < self.noise:
                self.noise = rms
            else:  # at most noise_rise more per window: a steady hum gets in, a slam does not
                self.noise = min(rms, max(self.noise, 1.0) * (1.0 + self.noise_rise))
        elif not quiet:
            if self.speech is None:
                self.speech = rms
            else:
                self.speech += (rms - self.speech) * self.speech_smoothing
        return quiet
