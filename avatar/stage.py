"""The stage: one avatar instance on air.

A stage owns the audio timeline (speech segments placed on its ``MediaClock`` at 48 kHz),
the mouth curves that go with them, the idle animation and the renderer. Tracks only
read from it: the audio track reads samples ``[pts, pts + n)``; the video track asks for
the face at clock time ``t``, whose mouth is looked up from the audio sample position at
``t`` (the A/V sync rule). Reading is non-destructive, so any number of tracks (a
customer, an operator watching, broadcast viewers) can read one stage.

Interrupting is one code path, ``flush``: everything not yet sent is cut (with a short
fade so there is no click) and the mouth returns to rest.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from math import gcd
from typing import Protocol

import numpy as np
from scipy.signal import resample_poly

from avatar.clock import AUDIO_RATE, MediaClock
from avatar.face_state import REST_MOUTH, FaceState, MouthShape
from avatar.idle import speaking_weight
from avatar.render.base import AvatarRenderer
from avatar.timeline import SpeechChunk, Word

#: The least time between "now" and the start of new speech. New speech otherwise starts at the
#: first sample no track has read (a track reads each 20 ms frame when its play time comes,
#: so that is the next frame boundary, at most 20 ms away); this margin only matters when the
#: tracks are behind the clock or absent. The mouth follows the audio either way: frames for
#: times after the start are drawn after it was scheduled.
SCHEDULE_LEAD = 0.005
#: Fade applied where speech is cut, so an interruption makes no click.
CUT_FADE = 0.010
#: How long the mouth takes to return to rest after speech is cut mid-word.
MOUTH_RELEASE = 0.08
#: How long the head takes to ease into (and out of) its speaking motion.
SPEECH_RAMP = 0.3
#: Segments that ended longer ago than this are dropped.
KEEP_PAST = 2.0


class MouthCurve(Protocol):
    """Mouth shape over one segment's own time (seconds from its first sample)."""

    duration: float

    def mouth_at(self, t: float) -> MouthShape: ...


class FaceSource(Protocol):
    """Pose and expression over clock time (the idle animation, or a face puppet)."""

    def state_at(self, t: float, speaking: float = 0.0) -> FaceState:
        """``speaking`` is 0..1: how much speech motion to blend in (it ramps, so the head
        does not jump when speech starts or stops)."""
        ...


def to_stage_rate(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Resample mono int16 audio to the stage rate (48 kHz), exactly ``len * 48000 / sr`` long."""
    if sample_rate == AUDIO_RATE:
        return audio.astype(np.int16, copy=False)
    g = gcd(AUDIO_RATE, sample_rate)
    out = resample_poly(audio.astype(np.float32), AUDIO_RATE // g, sample_rate // g)
    return np.clip(np.round(out), -32768, 32767).astype(np.int16)


@dataclass
class Segment:
    """One synthesised sentence placed on the stage timeline."""

    id: int
    start: int  # first sample, 48 kHz, on the stage clock
    audio: np.ndarray  # int16 at 48 kHz
    mouth: MouthCurve
    chunk: SpeechChunk
    cut_at: int | None = None  # sample where an interruption cut it, if any
    meta: dict[str, object] = field(default_factory=dict)

    @property
    def end(self) -> int:
        return self.start + len(self.audio)

    @property
    def start_time(self) -> float:
        return self.start / AUDIO_RATE

    @property
    def end_time(self) -> float:
        return self.end / AUDIO_RATE

    def words_heard(self) -> list[Word]:
        """The words fully played before the cut (all of them when not cut)."""
        if self.cut_at is None:
            return list(self.chunk.words)
        limit = (self.cut_at - self.start) / AUDIO_RATE
        return [w for w in self.chunk.words if w.end <= limit + 1e-3]


class Stage:
    """One avatar on air: audio timeline + face animation + renderer on one clock."""

    def __init__(
        self,
        renderer: AvatarRenderer,
        clock: MediaClock,
        idle: FaceSource,
        fps: int = 25,
        avatar: str = "",
    ) -> None:
        self.renderer = renderer
        self.clock = clock
        self.idle = idle
        self.fps = fps
        self.avatar = avatar
        self.face_override: FaceSource | None = None  # a puppet (operator's webcam) when set
        self._segments: list[Segment] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()  # segments are read from the render thread
        self._render_lock = threading.Lock()  # renderers cache; one render at a time
        self._read_until = 0  # furthest audio sample handed to any track
        self._released: tuple[int, MouthShape] | None = None  # (cut sample, mouth at cut)
        self.frames_rendered = 0

    # -- the audio timeline -------------------------------------------------------------
    def schedule(self, chunk: SpeechChunk, mouth: MouthCurve) -> Segment:
        """Place ``chunk`` right after what is already queued, or else at the first sample not
        yet handed to a track, but at least ``SCHEDULE_LEAD`` from now."""
        audio = to_stage_rate(chunk.audio, chunk.sample_rate)
        earliest = max(self.clock.sample() + int(SCHEDULE_LEAD * AUDIO_RATE), self._read_until)
        with self._lock:
            start = max([earliest] + [s.end for s in self._segments])
            seg = Segment(next(self._ids), start, audio, mouth, chunk)
            self._segments.append(seg)
            self._prune()
        return seg

    def read_audio(self, start: int, n: int) -> np.ndarray:
        """Samples ``[start, start + n)`` of the timeline (silence where nothing is scheduled)."""
        out = np.zeros(n, dtype=np.int16)
        end = start + n
        with self._lock:
            for seg in self._segments:
                if seg.end <= start or seg.start >= end:
                    continue
                a = max(start, seg.start)
                b = min(end, seg.end)
                out[a - start : b - start] = seg.audio[a - seg.start : b - seg.start]
            self._read_until = max(self._read_until, end)
        return out

    def flush(self) -> int:
        """Cut all speech not yet sent; return the sample where the cut ends.

        Samples already handed to a track cannot be recalled, so the cut starts at the
        furthest sample read and fades to silence over ``CUT_FADE``.
        """
        cut = max(self._read_until, self.clock.sample())
        fade = int(CUT_FADE * AUDIO_RATE)
        with self._lock:
            kept: list[Segment] = []
            for seg in self._segments:
                if seg.start >= cut:
                    seg.cut_at = seg.start  # never heard: drop (and its words count as unheard)
                    continue
                if seg.end > cut:
                    stop = min(seg.end, cut + fade)
                    audio = seg.audio[: stop - seg.start].copy()
                    tail = stop - cut
                    if tail > 0:
                        ramp = np.linspace(1.0, 0.0, tail, dtype=np.float32)
                        audio[-tail:] = (audio[-tail:].astype(np.float32) * ramp).astype(np.int16)
                    mouth = seg.mouth.mouth_at((stop - seg.start) / AUDIO_RATE)
                    seg.audio = audio
                    seg.cut_at = stop
                    self._released = (stop, mouth)
                kept.append(seg)
            self._segments = kept
        return cut + fade

    def speaking_until(self) -> float:
        """Clock time when the last scheduled sample plays (0 when nothing is queued)."""
        with self._lock:
            return max((s.end_time for s in self._segments), default=0.0)

    def is_speaking(self, t: float | None = None) -> bool:
        t = self.clock.time() if t is None else t
        return self._segment_at(int(t * AUDIO_RATE)) is not None

    def _segment_at(self, sample: int) -> Segment | None:
        with self._lock:
            for seg in self._segments:
                if seg.start <= sample < seg.end:
                    return seg
        return None

    def _speaking_weight(self, t: float) -> float:
        """0..1 speech-motion weight at ``t``: rises over ``SPEECH_RAMP`` after a run of back-to-back
        segments starts and falls over the same time after it ends."""
        with self._lock:
            runs: list[list[float]] = []
            for seg in self._segments:
                if runs and seg.start_time <= runs[-1][1] + 1e-3:
                    runs[-1][1] = max(runs[-1][1], seg.end_time)
                else:
                    runs.append([seg.start_time, seg.end_time])
        weight = 0.0
        for start, end in runs:
            if start <= t < end + SPEECH_RAMP:
                weight = max(weight, speaking_weight(t, start, end, SPEECH_RAMP))
        return weight

    def _prune(self) -> None:
        horizon = self.clock.sample() - int(KEEP_PAST * AUDIO_RATE)
        self._segments = [s for s in self._segments if s.end > horizon]

    # -- the picture --------------------------------------------------------------------
    def face_at(self, t: float) -> FaceState:
        """The face shown with clock time ``t``: pose from the idle/puppet source, mouth from the
        audio sample playing at ``t``."""
        sample = int(t * AUDIO_RATE)
        seg = self._segment_at(sample)
        source = self.face_override or self.idle
        state = source.state_at(t, speaking=self._speaking_weight(t))
        if seg is not None:
            return state.with_mouth(seg.mouth.mouth_at((sample - seg.start) / AUDIO_RATE))
        released = self._released
        if released is not None:
            since = (sample - released[0]) / AUDIO_RATE
            if 0 <= since < MOUTH_RELEASE:
                return state.with_mouth(released[1].lerp(REST_MOUTH, since / MOUTH_RELEASE))
        if self.face_override is not None:
            return state  # the puppet's own mouth
        return state.with_mouth(REST_MOUTH)

    def render(self, t: float) -> np.ndarray:
        """Render the RGB frame for clock time ``t``. Call from a worker thread."""
        state = self.face_at(t)
        with self._render_lock:
            frame = self.renderer.render(state)
            self.frames_rendered += 1
        return frame

    def render_rgba(self, t: float) -> np.ndarray:
        state = self.face_at(t)
        with self._render_lock:
            return self.renderer.render_rgba(state)

