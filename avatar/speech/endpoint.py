"""Endpointing: where a customer's speech starts, pauses, and where their turn ends.

``Endpointer`` is a pure state machine over ``VadFrame``s (one per 32 ms). It never reads
a clock: every instant comes from the frames (or from ``tick(now)``), all in seconds on
the stage's media clock. One per customer stream.

States and events::

    SILENT --speech for min_speech--> SPEAKING            emits SpeechStarted
    SPEAKING --silence for hangover--> PAUSED             emits SpeechEnded (audio so far)
    PAUSED --speech for min_speech--> SPEAKING            emits SpeechStarted(continues_turn=True)
    PAUSED --silence for end_of_turn--> SILENT            emits TurnEnded(reason="silence")
    SPEAKING/PAUSED --utterance reaches max_utterance--> SILENT   TurnEnded(reason="max_length")

``SpeechEnded`` marks a pause: the caller may start recognising the audio so far
(speculatively) and must drop that work if ``SpeechStarted(continues_turn=True)`` follows.
``TurnEnded`` is the end of the customer's turn: its audio runs from ``pre_roll`` before
the first speech onset to ``post_roll`` after the last speech. The end-of-turn silence is
``end_of_turn``, or the longer ``end_of_turn_unfinished`` while the latest partial
transcript (``update_partial``) ends the way an unfinished sentence does ("...and", "um",
"然后"), so a customer thinking mid-sentence is not cut off.
"""

from __future__ import annotations

import enum
import re
from collections import deque
from dataclasses import dataclass
from typing import Literal

import numpy as np

from avatar.speech.vad import SAMPLE_RATE, VadFrame


@dataclass(frozen=True, slots=True)
class EndpointConfig:
    """Endpointing thresholds; durations in seconds.

    ``threshold`` starts speech; ``neg_threshold`` (lower: hysteresis) is what counts as
    silence, so a probability between the two continues whatever is going on.
    """

    threshold: float = 0.5
    neg_threshold: float = 0.35
    min_speech: float = 0.2
    hangover: float = 0.3
    end_of_turn: float = 0.6
    end_of_turn_unfinished: float = 1.5
    max_utterance: float = 30.0
    pre_roll: float = 0.3
    post_roll: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 < self.neg_threshold <= self.threshold < 1.0:
            raise ValueError("endpointing needs 0 < neg_threshold <= threshold < 1")
        if min(self.min_speech, self.hangover, self.pre_roll, self.post_roll) < 0:
            raise ValueError("endpointing durations must not be negative")
        if not self.hangover <= self.end_of_turn <= self.end_of_turn_unfinished:
            raise ValueError("endpointing needs hangover <= end_of_turn <= end_of_turn_unfinished")
        if self.max_utterance <= self.min_speech:
            raise ValueError("max_utterance must be longer than min_speech")


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """Speech began at clock time ``t`` (its first speech window), decided at ``decided_at``.

    ``continues_turn`` is true when it resumes a turn after a pause (``SpeechEnded``).
    """

    t: float
    decided_at: float
    continues_turn: bool = False


@dataclass(frozen=True, slots=True)
class SpeechEnded:
    """Speech paused at ``t`` (end of its last speech window), decided ``hangover`` later.

    ``audio`` (int16, 16 kHz) is the turn so far, from ``audio_start`` (the first onset
    minus pre-roll) to ``t`` plus post-roll.
    """

    t: float
    decided_at: float
    audio: np.ndarray
    audio_start: float


@dataclass(frozen=True, slots=True)
class TurnEnded:
    """The customer's turn: speech from ``start`` to ``t``, decided at ``decided_at``.

    ``audio`` (int16, 16 kHz) begins at clock time ``audio_start`` (``start`` minus
    pre-roll) and ends post-roll after ``t``. ``reason`` is ``"silence"`` or
    ``"max_length"`` (the customer was still speaking; a new turn starts with the next
    speech).
    """

    start: float
    t: float
    decided_at: float
    audio: np.ndarray
    audio_start: float
    reason: Literal["silence", "max_length"]


EndpointEvent = SpeechStarted | SpeechEnded | TurnEnded


class EndpointState(enum.Enum):
    SILENT = "silent"
    SPEAKING = "speaking"
    PAUSED = "paused"


# Words a sentence does not end on: conjunctions, prepositions, articles, fillers.
_UNFINISHED_EN = frozenset(
    """and or but so because if then that which who to of for with from in on at by about
    the a an my your our their his her its this these those than as like um uh er erm hmm
    mm also plus when while although though unless until whether i i'm i'd we you is are
    was were can could would should will do does did have has want need""".split()
)
_UNFINISHED_ZH = (
    "然后", "还有", "就是", "那个", "这个", "因为", "所以", "但是", "可是", "而且", "或者",
    "还是", "如果", "的话", "和", "跟", "与", "呃", "嗯", "额", "啊", "我想", "我要", "请问",
)
_WORD = re.compile(r"[a-z']+")


def looks_unfinished(text: str) -> bool:
    """Whether a (partial) transcript ends the way an unfinished utterance does.

    Trailing commas, dashes and ellipses, or a last word that is a conjunction,
    preposition, article or filler (English), or a trailing Chinese connective or filler.
    Text ending in ``.?!。？！`` is finished; empty text is not unfinished.
    """
    stripped = text.strip()
    if not stripped:
        return False
    if stripped.endswith(("...", "…", ",", "，", "、", "-", "—")):
        return True
    if stripped.endswith((".", "?", "!", "。", "？", "！")):
        return False
    if stripped.endswith(_UNFINISHED_ZH):
        return True
    words = _WORD.findall(stripped.lower())
    return bool(words) and stripped[-1].isascii() and words[-1] in _UNFINISHED_EN


class Endpointer:
    """Per-stream endpointing state machine (see the module docstring).

    Feed every ``VadFrame`` in order with ``push``; call ``tick(now)`` when audio stops
    arriving (a muted or stalled microphone) so a turn still ends on time.
    """

    def __init__(self, config: EndpointConfig | None = None) -> None:
        self.config = config or EndpointConfig()
        self.state = EndpointState.SILENT
        self._recent: deque[VadFrame] = deque()  # pre-roll + candidate frames while SILENT
        self._candidate: float | None = None  # onset of speech not yet long enough
        self._turn: list[VadFrame] = []  # every frame of the current turn (incl. pre-roll)
        self._turn_start = 0.0  # first onset of the turn
        self._last_speech_end = 0.0  # end of the latest window above neg_threshold
        self._last_time = 0.0  # end of the latest frame seen
        self._partial = ""

    @property
    def in_turn(self) -> bool:
        """Whether the customer holds the turn (speaking or pausing mid-turn)."""
        return self.state is not EndpointState.SILENT

    def update_partial(self, text: str) -> None:
        """The latest partial transcript of the current turn (used for end-of-turn only)."""
        self._partial = text

    def push(self, frame: VadFrame) -> list[EndpointEvent]:
        """Consume one frame (in clock order); return the events it causes."""
        cfg = self.config
        self._last_time = frame.end
        if self.state is EndpointState.SILENT:
            return self._silent(frame)
        self._turn.append(frame)
        events: list[EndpointEvent] = []
        if self.state is EndpointState.SPEAKING:
            if frame.probability >= cfg.neg_threshold:
                self._last_speech_end = frame.end
            elif frame.end - self._last_speech_end >= cfg.hangover:
                self.state = EndpointState.PAUSED
                self._candidate = None
                events.append(self._speech_ended(frame.end))
        elif self.state is EndpointState.PAUSED:
            if frame.probability >= cfg.threshold and self._candidate is None:
                self._candidate = frame.start
            elif frame.probability < cfg.neg_threshold:
                self._candidate = None
            # A blip shorter than min_speech (a cough, a click) neither resumes the turn
            # nor postpones its end.
            if self._candidate is not None and frame.end - self._candidate >= cfg.min_speech:
                self.state = EndpointState.SPEAKING
                self._last_speech_end = frame.end
                events.append(SpeechStarted(self._candidate, frame.end, continues_turn=True))
                self._candidate = None
        events.extend(self._check_end(frame.end))
        return events

    def tick(self, now: float) -> list[EndpointEvent]:
        """Advance time to ``now`` without audio (counted as silence); return due events."""
        if now <= self._last_time or self.state is EndpointState.SILENT:
            return []
        self._last_time = now
        events: list[EndpointEvent] = []
        if self.state is EndpointState.SPEAKING and now - self._last_speech_end >= self.config.hangover:
            self.state = EndpointState.PAUSED
            self._candidate = None
            events.append(self._speech_ended(now))
        events.extend(self._check_end(now))
        return events

    def reset(self) -> None:
        """Drop the current turn and candidate speech (e.g. the session changed hands)."""
        self.state = EndpointState.SILENT
        self._recent.clear()
        self._candidate = None
        self._turn = []
        self._partial = ""

    # -- internals -------------------------------------------------------------------

    def _silent(self, frame: VadFrame) -> list[EndpointEvent]:
        cfg = self.config
        self._recent.append(frame)
        if frame.probability >= cfg.threshold and self._candidate is None:
            self._candidate = frame.start
        elif frame.probability < cfg.neg_threshold:
            self._candidate = None
        horizon = (self._candidate if self._candidate is not None else frame.end) - cfg.pre_roll
        while self._recent and self._recent[0].end <= horizon:
            self._recent.popleft()
        if self._candidate is None or frame.end - self._candidate < cfg.min_speech:
            return []
        onset = self._candidate
        self.state = EndpointState.SPEAKING
        self._turn = list(self._recent)
        self._recent.clear()
        self._turn_start = onset
        self._last_speech_end = frame.end
        self._candidate = None
        self._partial = ""
        events: list[EndpointEvent] = [SpeechStarted(onset, frame.end)]
        events.extend(self._check_end(frame.end))
        return events

    def _audio(self, until: float) -> tuple[np.ndarray, float]:
        frames = [f for f in self._turn if f.start < until]
        if not frames:
            return np.zeros(0, dtype=np.int16), self._turn_start
        audio = np.concatenate([f.audio for f in frames])
        keep = round((until - frames[0].start) * SAMPLE_RATE)
        return audio[: max(0, keep)], frames[0].start

    def _speech_ended(self, now: float) -> SpeechEnded:
        until = min(now, self._last_speech_end + self.config.post_roll)
        audio, audio_start = self._audio(until)
        return SpeechEnded(self._last_speech_end, now, audio, audio_start)

    def _check_end(self, now: float) -> list[EndpointEvent]:
        cfg = self.config
        if self.state is EndpointState.PAUSED and self._candidate is None:
            # A candidate in progress is the customer resuming: never end the turn under it.
            wait = cfg.end_of_turn_unfinished if looks_unfinished(self._partial) else cfg.end_of_turn
            if now - self._last_speech_end >= wait:
                return [self._end_turn(now, "silence")]
        elif self.state is EndpointState.SPEAKING and now - self._turn_start >= cfg.max_utterance:
            self._last_speech_end = now
            return [self._end_turn(now, "max_length")]
        return []

    def _end_turn(self, now: float, reason: Literal["silence", "max_length"]) -> TurnEnded:
        until = min(now, self._last_speech_end + self.config.post_roll)
        audio, audio_start = self._audio(until)
        event = TurnEnded(self._turn_start, self._last_speech_end, now, audio, audio_start, reason)
        self.state = EndpointState.SILENT
        # Frames after this turn's audio stay available as the next turn's pre-roll.
        self._recent = deque(f for f in self._turn if f.start >= until and f.end > now - self.config.pre_roll)
        self._turn = []
        self._candidate = None
        self._partial = ""
        return event
