"""Voice mode: the operator's microphone becomes the avatar's voice, with lip-sync from the sound.

The operator's audio (a WebRTC track from the desk) is mixed down to 48 kHz mono and, while
they are speaking, placed on the session's stage frame by frame as ordinary speech segments,
so it reaches the customer on the same audio track as the avatar's synthetic voice, and the
video shows a mouth driven by that audio (``avatar.speech.audio_lipsync.AudioMouthFollower``):
the mouth for a sample is looked up from the sample playing, as for any speech (the A/V sync
rule in ``avatar.stage``).

A level gate decides what is speech: it opens ``OPEN_ABOVE_FLOOR_DB`` above a noise floor
that it learns (and above ``MIN_OPEN_DB`` in any case), keeps ``PRE_ROLL`` of audio from
before it opened so word onsets are not clipped, and closes after ``HANGOVER`` of quiet.
Only gated speech is placed on the stage, so the avatar is at rest (and counts as silent for
barge-in) while the operator listens. Audio is never queued more than ``MAX_AHEAD`` ahead of
the playhead: when the stage is busy with a typed line, or the operator's stream arrives in a
burst, frames are dropped rather than adding delay.

Each stretch of speech is one utterance in the transcript and the audit trail, under the
operator's name, transcribed by the configured recogniser when there is one (otherwise
recorded as ``[voice, N s, not transcribed]``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from avatar.clock import AUDIO_RATE
from avatar.face_state import MouthShape
from avatar.listener import frame_pcm
from avatar.session import Session, TranscriptEntry
from avatar.speech.audio_lipsync import AudioMouthFollower
from avatar.speech.level import window_rms
from avatar.speech.resample import VAD_RATE, StreamResampler, to_mono
from avatar.timeline import SpeechChunk

log = logging.getLogger(__name__)

MIN_OPEN_DB = -50.0  # quieter than this (dBFS, per 20 ms) is never speech
OPEN_ABOVE_FLOOR_DB = 12.0
HANGOVER = 0.35  # seconds of quiet before the gate closes
PRE_ROLL = 0.06  # seconds kept from before the gate opens
MAX_AHEAD = 0.3  # seconds of audio queued ahead of the playhead at most
MIN_UTTERANCE = 0.25  # shorter stretches (a cough, a click) are not recorded

#: Recognises one utterance (int16 mono at 16 kHz); None when there is no recogniser.
Transcribe = Callable[[np.ndarray], Awaitable[str | None]]


@dataclass
class FollowedMouth:
    """One voice segment's mouth: the follower's mouth from the segment's own audio time on."""

    follower: AudioMouthFollower
    offset: float  # the follower's audio time at the segment's first sample
    duration: float

    def mouth_at(self, t: float) -> MouthShape:
        return self.follower.mouth_at(self.offset + t)


def level_db(samples: np.ndarray) -> float:
    """RMS level of int16 samples in dBFS (-120 for digital silence)."""
    if samples.size == 0:
        return -120.0
    rms = window_rms(samples)
    return 20.0 * math.log10(rms / 32768.0) if rms > 0 else -120.0


class VoiceGate:
    """Speech/no speech per frame from its level: an adaptive noise floor (follows dips at once,
    creeps up 3 dB/s), an opening threshold above it, and a hangover."""

    def __init__(self) -> None:
        self.floor_db = -70.0
        self.open = False
        self._quiet = 0.0

    def step(self, level: float, duration: float) -> bool:
        """Feed one frame's level (dBFS) and length (s); return whether the gate is open."""
        self.floor_db = level if level < self.floor_db else self.floor_db + 3.0 * duration
        loud = level > max(MIN_OPEN_DB, self.floor_db + OPEN_ABOVE_FLOOR_DB)
        if loud:
            self.open, self._quiet = True, 0.0
        elif self.open:
            self._quiet += duration
            if self._quiet >= HANGOVER:
                self.open = False
        return self.open


class OperatorVoice:
    """Puts one operator's microphone on one session's stage (see the module docstring)."""

    def __init__(
        self,
        session: Session,
        operator: str,
        transcribe: Transcribe | None = None,
        wall_clock: Callable[[], float] = time.time,
        executor: Executor | None = None,
    ) -> None:
        self.session = session
        self.executor = executor  # where the per-frame analysis runs (None: the loop's default pool)
        self.operator = operator
        self.transcribe = transcribe
        self.wall_clock = wall_clock
        self.follower = AudioMouthFollower(history=2.0)
        self.gate = VoiceGate()
        self._to48 = StreamResampler(AUDIO_RATE)
        self._to16 = StreamResampler(VAD_RATE)
        self._pre_roll: deque[tuple[np.ndarray, np.ndarray, float]] = deque()
        self._utterance: list[np.ndarray] = []  # 16 kHz audio of the stretch in progress
        self._utterance_s = 0.0
        self._started_at = 0.0
        self.frames_scheduled = 0
        self.frames_dropped = 0
        self.utterances = 0

    async def run(self, track: MediaStreamTrack) -> None:
        """Read ``track`` until it ends (or the task is cancelled). The signal work (mixing down,
        resampling, the lip-sync analysis: about 0.6 ms a frame) runs on ``executor``, one frame
        at a time and in order; placing the audio on the stage happens on the event loop."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                frame = await track.recv()
                if not isinstance(frame, av.AudioFrame):
                    continue
                analysed = await loop.run_in_executor(self.executor, self.analyse, frame)
                self.place(*analysed)
        except MediaStreamError:
            pass
        finally:
            self.end()

    def analyse(self, frame: av.AudioFrame) -> tuple[np.ndarray, np.ndarray, float, float]:
        """One received frame -> (48 kHz mono, 16 kHz mono, mouth-follower offset, level dBFS)."""
        pcm, rate, channels = frame_pcm(frame)
        if rate == AUDIO_RATE:
            mono48 = np.clip(np.rint(to_mono(pcm, channels)), -32768, 32767).astype(np.int16)
        else:
            mono48 = self._to48.push(pcm, rate, channels)
        mono16 = self._to16.push(pcm, rate, channels)
        offset = self.follower.time
        if mono48.size:
            self.follower.push(mono48, AUDIO_RATE)
        return mono48, mono16, offset, level_db(mono48)

    def feed(self, mono48: np.ndarray, mono16: np.ndarray) -> None:
        """One frame of the operator's voice, at 48 kHz and (for recognition) 16 kHz: analysed and
        placed at once (on the calling thread)."""
        offset = self.follower.time
        if mono48.size:
            self.follower.push(mono48, AUDIO_RATE)
        self.place(mono48, mono16, offset, level_db(mono48))

    def place(self, mono48: np.ndarray, mono16: np.ndarray, offset: float, level: float) -> None:
        """Gate an analysed frame and put it on the stage when it is speech (event loop)."""
        if mono48.size == 0:
            return
        duration = mono48.size / AUDIO_RATE
        was_open = self.gate.open
        if self.gate.step(level, duration):
            if not was_open:
                self._begin()
            self._place(mono48, offset)
            self._utterance.append(mono16)
            self._utterance_s += duration
            return
        if was_open:
            self._finish()
        self._pre_roll.append((mono48, mono16, offset))
        while sum(len(a) for a, _, _ in self._pre_roll) > PRE_ROLL * AUDIO_RATE:
            self._pre_roll.popleft()

    def end(self) -> None:
        """The microphone went away: a stretch of speech in progress ends here."""
        if self.gate.open:
            self.gate.open = False
            self._finish()

    def _begin(self) -> None:
        self._started_at = self.wall_clock()
        self._utterance, self._utterance_s = [], 0.0
        for mono48, mono16, offset in self._pre_roll:
            self._place(mono48, offset)
            self._utterance.append(mono16)
            self._utterance_s += mono48.size / AUDIO_RATE
        self._pre_roll.clear()

    def _place(self, mono48: np.ndarray, offset: float) -> None:
        stage = self.session.stage
        if stage.speaking_until() - stage.clock.time() > MAX_AHEAD:
            self.frames_dropped += 1
            return
        duration = mono48.size / AUDIO_RATE
        chunk = SpeechChunk(text="", audio=mono48, sample_rate=AUDIO_RATE, phonemes=[], engine="operator-voice")
        stage.schedule(chunk, FollowedMouth(self.follower, offset, duration))
        self.frames_scheduled += 1

    def _finish(self) -> None:
        audio = np.concatenate(self._utterance) if self._utterance else np.zeros(0, np.int16)
        seconds = self._utterance_s
        self._utterance, self._utterance_s = [], 0.0
        if seconds < MIN_UTTERANCE:
            return
        self.utterances += 1
        started, ended = self._started_at, self.wall_clock()
        if self.session.closed.is_set():
            self._record(f"[voice, {seconds:.1f} s]", started, ended)
            return
        self.session.spawn(self._transcribe_and_record(audio, seconds, started, ended), "operator-voice-text")

    async def _transcribe_and_record(self, audio: np.ndarray, seconds: float, started: float, ended: float) -> None:
        text: str | None = None
        if self.transcribe is not None:
            try:
                text = await self.transcribe(audio)
            except Exception:
                log.exception("session %s: the operator's voice could not be transcribed", self.session.id)
        self._record(text.strip() if text and text.strip() else f"[voice, {seconds:.1f} s, not transcribed]",
                     started, ended)

    def _record(self, text: str, started: float, ended: float) -> None:
        self.session.record(
            TranscriptEntry(speaker=self.operator, text=text, at=ended, started=started, meta={"voice": True})
        )
        self.session.emit({"type": "transcript", "speaker": self.operator, "text": text, "final": True})


def recognizer_transcribe(engines: object) -> Transcribe:
    """A ``Transcribe`` over the engines' shared recogniser (loaded on first use; None when it
    cannot be, so the utterance is recorded as not transcribed)."""
    from avatar.speech.asr.base import ASRError

    async def transcribe(audio16k: np.ndarray) -> str | None:
        try:
            recognizer = await asyncio.to_thread(engines.recognizer)  # type: ignore[attr-defined]
        except ASRError as exc:
            log.info("operator voice not transcribed: %s", exc)
            return None
        prompt = engines.asr_prompt(None)  # type: ignore[attr-defined]
        try:
            result = await recognizer.transcribe(audio16k, None, prompt)
        except ASRError as exc:
            log.warning("operator voice not transcribed: %s", exc)
            return None
        return str(result.text)

    return transcribe
