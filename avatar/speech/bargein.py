"""Barge-in: deciding, as early as possible, that the customer is talking over the avatar.

``BargeInGuard`` is one session's listening gate, a pure state machine on the stage's
media clock (never a wall clock). It takes:

- every customer ``VadFrame`` (``push``), in order;
- when the avatar speaks (``avatar_started(t)`` / ``avatar_stopped(t)``);
- the avatar's outgoing audio as it plays (``push_far_end``), for the echo guard;
- the latest partial transcript of the customer, when there is one (``update_partial``).

``push`` returns a ``GuardResult``: the frame to hand to the ``Endpointer`` (its
probability zeroed where the echo guard heard the avatar's own voice, so the avatar never
answers itself) and the events it caused:

- ``BargeIn(onset, decided_at, text)``: stop the avatar. ``onset`` is the clock time the
  customer's speech began (cut the stored reply there), ``decided_at`` when it was decided.
  Without backchannel filtering the decision comes ``min_speech`` after the onset (about
  130 ms with the 32 ms VAD windows), so the stage can be silent within 250 ms.
- ``Backchannel(onset, end, text)``: a short "uh-huh"/"嗯" that was let pass
  (``ignore_backchannel``): a burst under ``backchannel_max`` with no follow-on speech
  within ``follow_on_gap``, or, given a partial transcript, made only of backchannel words
  and shorter than ``backchannel_words_max``. Filtering costs time: the decision waits
  until the burst is ``backchannel_max`` long (unless a partial shows other words).

While the avatar is silent nothing here interrupts: the customer's speech is an ordinary
turn for the ``Endpointer``. While it speaks, act on the endpointer's turn only after a
``BargeIn``; a turn that ends without one was a backchannel or noise over the avatar.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from avatar.speech.echo import EchoConfig, EchoGuard, EchoVerdict
from avatar.speech.vad import VadFrame


@dataclass(frozen=True, slots=True)
class BargeInConfig:
    """Barge-in thresholds; durations in seconds on the media clock."""

    threshold: float = 0.5  # VAD probability that starts a burst of customer speech
    neg_threshold: float = 0.35  # below this a window is silence (hysteresis)
    min_speech: float = 0.12  # customer speech needed to interrupt
    ignore_backchannel: bool = False
    backchannel_max: float = 0.4
    backchannel_words_max: float = 1.0
    follow_on_gap: float = 0.3  # silence that ends a burst
    echo_guard: bool = True
    echo: EchoConfig = field(default_factory=EchoConfig)

    def __post_init__(self) -> None:
        if not 0.0 < self.neg_threshold <= self.threshold < 1.0:
            raise ValueError("barge-in needs 0 < neg_threshold <= threshold < 1")
        if self.min_speech < 0 or self.follow_on_gap <= 0:
            raise ValueError("barge-in needs min_speech >= 0 and follow_on_gap > 0")
        if not self.min_speech <= self.backchannel_max <= self.backchannel_words_max:
            raise ValueError("barge-in needs min_speech <= backchannel_max <= backchannel_words_max")


@dataclass(frozen=True, slots=True)
class BargeIn:
    """The customer cut in: speech from clock time ``onset``, decided at ``decided_at``."""

    onset: float
    decided_at: float
    text: str | None = None


@dataclass(frozen=True, slots=True)
class Backchannel:
    """A short acknowledgement over the avatar, let pass (``ignore_backchannel``)."""

    onset: float
    end: float
    text: str | None = None


BargeInEvent = BargeIn | Backchannel


@dataclass(frozen=True, slots=True)
class GuardResult:
    """What ``BargeInGuard.push`` made of one frame.

    ``frame`` goes on to the ``Endpointer`` (probability 0 when it was the avatar's echo);
    ``echo`` is the echo guard's verdict (``None`` when it was not consulted).
    """

    frame: VadFrame
    events: tuple[BargeInEvent, ...] = ()
    echo: EchoVerdict | None = None


_BACKCHANNEL_EN = frozenset(
    """uh-huh uh huh uhhuh mm-hmm mmhmm mhm mm hmm hm mhmm um uh oh ah aha ahh ooh ok okay
    k yeah yep yes yup ya right sure alright all got it i see thanks thank you cool great
    fine good nice wow really""".split()
)
# Longest first: Chinese has no spaces, so backchannels are peeled off the front greedily.
_BACKCHANNEL_ZH = tuple(
    "嗯嗯 嗯哼 好的 对对 是的 明白 知道了 了解 可以 没错 谢谢 嗯 哦 噢 喔 好 对 是 行 啊 呃 额 哈".split()
)
_TOKEN = re.compile(r"[a-z]+(?:[-'][a-z]+)*|[\u3400-\u9fff]+")


def is_backchannel(text: str) -> bool:
    """Whether ``text`` consists only of backchannel words ("uh-huh", "okay", "嗯", "好的").

    Empty text is not a backchannel (nothing was recognised, so nothing is known).
    """
    tokens = _TOKEN.findall(text.lower())
    if not tokens:
        return False
    for token in tokens:
        if token.isascii():
            if token not in _BACKCHANNEL_EN and not all(
                part in _BACKCHANNEL_EN for part in re.split(r"[-']", token)
            ):
                return False
            continue
        rest = token
        while rest:
            match = next((b for b in _BACKCHANNEL_ZH if rest.startswith(b)), None)
            if match is None:
                return False
            rest = rest[len(match) :]
    return True


class BargeInGuard:
    """Per-session barge-in state machine (see the module docstring). Not thread-safe."""

    def __init__(self, config: BargeInConfig | None = None) -> None:
        self.config = config or BargeInConfig()
        self.echo: EchoGuard | None = EchoGuard(self.config.echo) if self.config.echo_guard else None
        self._speaking = False
        self._fired = False  # one barge-in per avatar utterance
        self._onset: float | None = None  # start of the current burst of customer speech
        self._last_speech = 0.0  # end of the burst's latest speech window
        self._speech_time = 0.0  # seconds of speech windows in the burst
        self._partial: str | None = None
        self._floor_until: float | None = None  # after a barge-in: pass speech until this time

    @property
    def avatar_speaking(self) -> bool:
        return self._speaking

    def avatar_started(self, t: float) -> None:
        """The avatar's voice starts playing at clock time ``t``."""
        if not self._speaking:
            self._speaking = True
            self._fired = False
            self._floor_until = None
            self._clear_burst()

    def avatar_stopped(self, t: float) -> None:
        """The avatar fell silent at ``t`` (finished, or was interrupted and flushed)."""
        self._speaking = False
        self._clear_burst()

    def push_far_end(self, audio: np.ndarray, sample_rate: int, t: float) -> None:
        """The avatar's outgoing audio (int16 mono) whose first sample plays at ``t``."""
        if self.echo is not None:
            self.echo.push_far_end(audio, sample_rate, t)

    def update_partial(self, text: str) -> None:
        """The latest partial transcript of the customer's current speech."""
        self._partial = text

    def push(self, frame: VadFrame) -> GuardResult:
        """Consume one customer frame (clock order); see ``GuardResult``."""
        cfg = self.config
        verdict: EchoVerdict | None = None
        if self.echo is not None:
            # Every window goes in (the near-end envelope must stay whole); the verdict only
            # matters for windows the VAD calls speech.
            assessed = self.echo.assess(frame.audio, frame.start)
            verdict = assessed if frame.probability >= cfg.neg_threshold else None
        if self._floor_until is not None:
            # The customer has cut in and holds the floor: their speech passes untouched
            # (the avatar is going quiet, so any echo is dying away) until they pause.
            if frame.probability >= cfg.neg_threshold:
                self._floor_until = frame.end + cfg.follow_on_gap
            elif frame.end >= self._floor_until:
                self._floor_until = None
            return GuardResult(frame, (), verdict)
        is_echo = verdict is not None and not verdict.customer
        clean = VadFrame(frame.start, frame.end, 0.0, frame.audio) if is_echo else frame
        if not self._speaking or self._fired:
            return GuardResult(clean, (), verdict)
        events = self._step(clean)
        if any(isinstance(e, BargeIn) for e in events):
            self._floor_until = frame.end + cfg.follow_on_gap
        return GuardResult(clean, tuple(events), verdict)

    # -- internals -------------------------------------------------------------------

    def _clear_burst(self) -> None:
        self._onset = None
        self._partial = None

    def _step(self, frame: VadFrame) -> list[BargeInEvent]:
        cfg = self.config
        if self._onset is None:
            if frame.probability >= cfg.threshold:
                self._onset = frame.start
                self._last_speech = frame.end
                self._speech_time = frame.end - frame.start
                self._partial = None
            else:
                return []
        elif frame.probability >= cfg.neg_threshold:
            self._last_speech = frame.end
            self._speech_time += frame.end - frame.start
        elif frame.end - self._last_speech >= cfg.follow_on_gap:
            return self._end_burst()
        onset = self._onset
        if onset is None:  # pragma: no cover - set above
            return []
        # Durations count speech windows, not the span: scattered windows (echo the guard
        # missed, clicks) must not add up to a barge-in through the gaps between them.
        if self._should_interrupt(self._speech_time):
            self._fired = True
            text = self._partial
            self._clear_burst()
            return [BargeIn(onset, frame.end, text)]
        return []

    def _should_interrupt(self, duration: float) -> bool:
        cfg = self.config
        if duration < cfg.min_speech:
            return False
        if not cfg.ignore_backchannel:
            return True
        text = self._partial
        if text and text.strip():
            # Words decide: anything but acknowledgements interrupts at once; pure
            # acknowledgements are let pass up to backchannel_words_max.
            return not is_backchannel(text) or duration >= cfg.backchannel_words_max
        return duration >= cfg.backchannel_max

    def _end_burst(self) -> list[BargeInEvent]:
        onset, end, text, speech = self._onset, self._last_speech, self._partial, self._speech_time
        self._clear_burst()
        if onset is None or speech < self.config.min_speech:
            return []  # a click or a breath, not speech
        return [Backchannel(onset, end, text)]
