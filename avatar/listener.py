"""The customer's voice in a live session: hearing, turn-taking, recognition and barge-in.

One ``Listener`` per session with a microphone. Each inbound audio frame (aiortc's
``AudioFrame``: 20 ms, 48 kHz s16, mono or stereo) goes once through::

    StreamResampler (16 kHz) -> VadStream (Silero, 32 ms windows)
        -> BargeInGuard (far end: the stage's outgoing audio; the speaker's state)
        -> Endpointer (speech start, pause, end of turn)

on the stage's media clock. Inbound audio is stamped by sample count from the earliest
arrival seen (network jitter only ever delays a frame, so the least delayed one marks the
stream's true pace), following slow clock drift and re-anchoring after a gap.
The per-frame signal work runs on the engines' listening thread pool; the state machines'
decisions are handled on the event loop.

A turn ends in one call, ``session.customer_text(text)`` (transcript, ``transcript`` event,
the driver's answer). To answer quickly:

- recognition starts *speculatively* while the customer may be done: at the first quiet
  window after loud speech (``avatar.speech.level``: about 0.05 s after the last loud
  sample, while Silero's decay tail still calls speech for another 0.05-0.1 s), when no
  recognition of this stream is in flight; at the first pause of ``pause_gap`` after their
  speech (both for engines that afford partial transcripts; Silero hardly ever dips inside
  a word, so these are the pauses between phrases and the end of the turn); and at the
  endpointer's ``SpeechEnded`` (every engine). A speculation is stale once loud speech
  follows its audio, or the VAD still calls speech more than ``VAD_TAIL`` after it; its
  text is still shown as the live (partial) transcript. Recognitions run one at a time, so
  a newer speculation withdraws an older one still queued.
- a speculative transcript that reads finished goes to the driver's ``prepare`` (the brain
  decides its answer on a copy of the dialogue while the turn is being confirmed), and the
  first TTS piece of the planned answer (the brain's reply; the echo's: the words) is
  synthesised into the TTS cache meanwhile (``avatar.drivers.warm_answer``), so the answer's
  first audio does not wait for it. Nothing is said before the turn is over.
- the turn is taken as over ``commit_question`` after the end of the sound when the
  speculative transcript *reads* as a finished question ("How do I activate my new card?"),
  ``commit_silence`` when it reads as another finished sentence (on time: a timer on the
  stage clock, once the VAD too hears silence); otherwise the endpointer's
  end-of-turn silence decides (longer when the words trail off: "...my card and"), and a
  speculation covering exactly that speech is reused instead of recognising again. A
  customer who goes on after a turn taken early cuts in on the answer like any barge-in.

Barge-in: the guard's ``BargeIn`` calls ``session.interrupt()`` at once (the stage flush is
immediate; the driver's answer in progress is cancelled). Speech over the avatar that never
became a barge-in (a backchannel, noise, echo the guard let through) is not answered while
the avatar is still talking, nor when its words are only a backchannel.

Errors: a failing recogniser gives a spoken apology, an ``error`` event and a logged error;
the session carries on. Silence: a customer who says nothing for ``silence_prompt_after``
seconds hears a prompt, and after ``silence_close_after`` a polite goodbye (the call stays
open). Timers run on the stage clock. Every task is owned by the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from avatar.clock import AUDIO_RATE
from avatar.metrics import SPEECH_END
from avatar.speaker import Line
from avatar.speech.asr.base import ASRError, PartialSchedule, SpeechRecognizer, Transcript
from avatar.speech.asr.prompt import domain_prompt
from avatar.speech.bargein import (
    Backchannel,
    BargeIn,
    BargeInConfig,
    BargeInGuard,
    GuardResult,
    is_backchannel,
)
from avatar.speech.endpoint import (
    EndpointConfig,
    Endpointer,
    EndpointEvent,
    EndpointState,
    SpeechEnded,
    SpeechStarted,
    TurnEnded,
    looks_unfinished,
)
from avatar.speech.level import SoundLevel
from avatar.speech.resample import VAD_RATE, StreamResampler
from avatar.speech.vad import VadFrame, VoiceActivityDetector

if TYPE_CHECKING:
    from avatar.config import Settings
    from avatar.server.engines import Engines
    from avatar.session import Session

log = logging.getLogger(__name__)

#: What the avatar says on its own account, by language.
LINES: dict[str, dict[str, str]] = {
    "apology": {
        "en": "Sorry, I didn't catch that. Could you say it again, or type your question?",
        "zh": "抱歉，我没有听清。请您再说一遍，或者输入您的问题。",
    },
    "prompt": {
        "en": "Are you still there? Take your time, I'm here whenever you're ready.",
        "zh": "您还在吗？不着急，您准备好了随时告诉我。",
    },
    "goodbye": {
        "en": "It seems you have stepped away. Thank you for calling, goodbye!",
        "zh": "您好像暂时离开了。感谢您的来电，再见！",
    },
}
#: The written half of the apology (an ``error`` event the page shows).
RECOGNITION_FAILED = (
    "Sorry, your words could not be recognised. Please say it again or type your question. "
    "抱歉，语音识别失败，请再说一遍或输入文字。"
)
VOICE_UNAVAILABLE = (
    "Voice input is unavailable right now: please type your question. 语音输入暂不可用，请输入文字。"
)

_TERMINAL = (".", "?", "!", "。", "？", "！")
#: How long after the end of the sound the VAD may still call speech and the speech still be
#: over: Silero's decay tail (40-140 ms on the benchmark's questions), with a margin.
VAD_TAIL = 0.2
#: Speech a turn must have before its first quiet window starts a recognition.
SOUND_END_MIN_SPEECH = 0.25


def reads_finished(text: str) -> bool:
    """Whether a transcript reads as a finished utterance.

    It must end with terminal punctuation and, that punctuation aside, not the way an
    unfinished utterance does (``looks_unfinished``): Whisper closes speech that trails off
    with a full stop too ("I lost my card and."). An ellipsis is trailing off, not an end.
    """
    stripped = text.strip()
    if not stripped.endswith(_TERMINAL) or stripped.endswith(("...", "…")):
        return False
    body = stripped.rstrip(".。 ")
    return bool(body) and not looks_unfinished(body)


# How an English question starts (Whisper sometimes closes one with a full stop).
_QUESTION_START = frozenset(
    """what what's how how's why when where where's who who's whom whose which can could would
    will shall should may might must is isn't are aren't was wasn't were do does doesn't did
    didn't don't have has had am""".split()
)
_SENTENCES = re.compile(r"(?<=[.?!。？！])\s*")


def reads_as_question(text: str) -> bool:
    """Whether a finished transcript (``reads_finished``) ends with a question: a question mark,
    or a last sentence that starts like an English question ("What is my account balance.")
    or ends like a Chinese one (吗, 呢). Questions hand the turn over most clearly."""
    if not reads_finished(text):
        return False
    stripped = text.strip()
    if stripped.endswith(("?", "？")):
        return True
    last = [part for part in _SENTENCES.split(stripped) if part.strip()][-1]
    body = last.rstrip(".!。！ ")
    if body.endswith(("吗", "呢", "么")):
        return True
    first = body.split(maxsplit=1)[0].lower().strip(",\"'") if body.split() else ""
    return first in _QUESTION_START


def frame_pcm(frame: av.AudioFrame) -> tuple[np.ndarray, int, int]:
    """An audio frame as (interleaved int16 samples, sample rate, channel count).

    Takes packed or planar frames of 16-bit, 32-bit or float samples (aiortc's Opus decoder
    gives packed s16 stereo at 48 kHz)."""
    channels = len(frame.layout.channels)
    data: np.ndarray = np.asarray(frame.to_ndarray())
    if frame.format.is_planar and channels > 1:
        data = data.reshape(channels, -1).T  # (channels, n) -> (n, channels): interleave
    data = data.reshape(-1)
    if data.dtype == np.int16:
        pcm = data
    elif np.issubdtype(data.dtype, np.floating):
        pcm = np.clip(np.rint(data * 32767.0), -32768, 32767).astype(np.int16)
    elif data.dtype == np.int32:
        pcm = (data.astype(np.int32) >> 16).astype(np.int16)
    else:
        raise ValueError(f"unsupported audio sample format {frame.format.name}")
    return pcm, int(frame.sample_rate), channels


@dataclass(frozen=True)
class ListenerConfig:
    """How a session listens. Durations in seconds of media time.

    ``pause_gap``: silence after speech that starts a speculative recognition of the turn so
    far (engines with partial transcripts only; one VAD window: the first silent one). With
    ``speculate_at_pauses``, the first quiet window after loud speech starts one too (see
    ``avatar.speech.level``), when no recognition of this stream is in flight.
    ``commit_question``: silence after the end of the sound after which a turn whose words
    read as a finished question is over, ``commit_silence`` for other finished words (``early_commit``; the settings
    ``end_of_turn_question`` and ``end_of_turn_finished``: a pause after "I lost my debit
    card." may well be followed by "can you block it?"); otherwise the endpointer's
    ``end_of_turn`` decides.
    ``partials``: live transcripts while the customer speaks, at most one per
    ``partial_interval`` of speech and none before ``partial_min_audio``. Silence timers of 0
    or less are off; a prompt due no earlier than the goodbye is skipped.
    """

    endpoint: EndpointConfig = field(default_factory=EndpointConfig)
    bargein: BargeInConfig = field(default_factory=BargeInConfig)
    speculate_at_pauses: bool = True
    pause_gap: float = 0.032
    early_commit: bool = True
    commit_question: float = 0.2
    commit_silence: float = 0.5
    partials: bool = True
    partial_interval: float = 1.0
    partial_min_audio: float = 0.8
    silence_prompt_after: float = 20.0
    silence_close_after: float = 60.0
    default_lang: str = "en"
    timer_step: float = 0.1
    stall_after: float = 1.0  # no inbound audio this long: time goes on as silence (a stalled microphone)
    resync: float = 0.2  # inbound audio arriving this much later than its pace is a gap: re-anchor
    drift: float = 5e-4  # how fast (s/s) the inbound timeline may slip later to follow clock drift

    @classmethod
    def from_settings(cls, settings: Settings) -> ListenerConfig:
        eot = settings.end_of_turn
        endpoint = EndpointConfig(
            hangover=min(0.3, eot), end_of_turn=eot, end_of_turn_unfinished=max(1.5, eot)
        )
        finished = settings.end_of_turn_finished if settings.end_of_turn_finished > 0 else eot
        question = settings.end_of_turn_question if settings.end_of_turn_question > 0 else finished
        return cls(
            endpoint=endpoint,
            early_commit=min(finished, question) < eot,
            commit_question=min(question, eot),
            commit_silence=min(finished, eot),
            bargein=BargeInConfig(ignore_backchannel=settings.ignore_backchannel),
            silence_prompt_after=settings.silence_prompt_after,
            silence_close_after=settings.silence_close_after,
            default_lang=settings.default_lang,
        )


@dataclass
class TurnRecord:
    """How one customer turn went, on the stage clock (for benchmarks and logs).

    ``how``: "early" (the words read finished), "silence" or "max_length" (the endpointer).
    ``outcome``: "answered", "empty" (nothing recognised), "dropped" (speech over the avatar
    that was no barge-in), "failed" (recognition failed; apologised), "cancelled".
    """

    turn: int
    speech_start: float
    speech_end: float
    decided_at: float = math.nan
    how: str = ""
    recognition_started: float = math.nan
    recognition_done: float = math.nan
    reused_speculation: bool = False
    text: str = ""
    answer_started: float = math.nan
    answer_done: float = math.nan
    outcome: str = ""


@dataclass
class BargeInRecord:
    """One barge-in: the customer's speech onset, the guard's decision, the interrupt call."""

    onset: float
    decided_at: float
    interrupted_at: float
    cut_text: str | None


@dataclass
class _Recognition:
    """One recognition of a turn's audio: speculative (may become the turn's final) or partial."""

    turn: int
    speech_end: float
    started: float
    task: asyncio.Task[Transcript]
    partial: bool
    finished: float = math.nan  # clock time the result (or failure) came

    def transcript(self) -> Transcript | None:
        """The result if the task finished well, else ``None``."""
        if not self.task.done() or self.task.cancelled() or self.task.exception() is not None:
            return None
        return self.task.result()


class UnavailableRecognizer:
    """Stands in for a recogniser that could not be loaded: every call raises its error, so
    each spoken turn gets the apology instead of silence."""

    name = "unavailable"
    supports_partial = False

    def __init__(self, error: Exception) -> None:
        self.error = error

    async def transcribe(
        self,
        audio16k: np.ndarray,
        lang: str | None = None,
        prompt: str | None = None,
        *,
        partial: bool = False,
    ) -> Transcript:
        raise ASRError(str(self.error))

    async def aclose(self) -> None:
        return None


class Listener:
    """Hears one session's customer (see the module docstring).

    ``recognizer`` and ``vad`` are the shared engines; ``prompt(lang)`` gives the domain prompt
    for recognition; ``executor`` runs the per-frame signal work (``None``: the loop's default
    executor). Feed frames with ``run(track)`` (a live call) or ``hear(frame)`` (tests, in
    order), after ``start()`` for the timers. Not thread-safe: one owner.
    """

    def __init__(
        self,
        session: Session,
        vad: VoiceActivityDetector,
        recognizer: SpeechRecognizer,
        config: ListenerConfig | None = None,
        *,
        prompt: Callable[[str | None], str] | None = None,
        executor: Executor | None = None,
    ) -> None:
        self.session = session
        self.clock = session.stage.clock
        self.recognizer = recognizer
        self.config = cfg = config or ListenerConfig()
        self._prompt = prompt or (lambda lang: domain_prompt(lang=lang))
        self._executor = executor
        self.guard = BargeInGuard(cfg.bargein)
        self.endpointer = Endpointer(cfg.endpoint)
        self._vad = vad.stream(0.0)
        self._resampler = StreamResampler(VAD_RATE)
        self._schedule = PartialSchedule(interval=cfg.partial_interval, min_audio=cfg.partial_min_audio)
        # Recent windows, enough for the longest turn and its pre-roll (about 1 MB at most).
        keep = cfg.endpoint.max_utterance + cfg.endpoint.pre_roll + 1.0
        self._frames: deque[VadFrame] = deque(maxlen=int(keep * VAD_RATE / 512) + 1)
        # Inbound timeline: clock time of stream time 0 (the least delayed arrival so far), the
        # stream time received, and the stream time where the resampler (re)started.
        self._offset: float | None = None
        self._offset_at = 0.0
        self._stream_time = 0.0
        self._resampled_from = 0.0
        self._resampled = 0  # 16 kHz samples out of the resampler since it (re)started
        self._far_sample: int | None = None  # next stage sample to hand the echo guard
        self._pending_partial: str | None = None  # for the guard, applied in the worker
        self._in_dsp = False
        self._last_frame_at = self.clock.time()
        self._lang = cfg.default_lang
        # The turn in progress.
        self._turn = 0
        self._turn_record: TurnRecord | None = None
        self._turn_audio_start = 0.0
        self._over_avatar = False  # began while the avatar spoke, without a barge-in
        self._barged = False
        self._pending_bargein: BargeIn | None = None
        self._speech_end = 0.0  # end of the latest speech window, as the endpointer counts it
        self._sound_end = 0.0  # end of the latest speech window that was loud (not quiet)
        self._vad_silent = True  # the latest window is below the endpointer's silence threshold
        self._level = SoundLevel()
        self._commit_check: tuple[float, asyncio.Task[None]] | None = None
        self._last_voice = -math.inf  # end of the latest window above the speech threshold
        self._spec: _Recognition | None = None
        self._partial: _Recognition | None = None
        self._warming: tuple[str, asyncio.Task[None]] | None = None  # the echo's answer being warmed
        self._reply_lock = asyncio.Lock()  # answers go to the driver one turn at a time
        self._pending_turns = 0  # turns ended and not yet recognised and handed to the driver
        # Silence timers.
        self._quiet_since = self.clock.time()
        self._prompted = False
        self._said_goodbye = False
        self._own_lines: list[Line] = []
        self._timer: asyncio.Task[None] | None = None
        #: Called with each finished turn / barge-in (benchmarks, logs).
        self.on_turn: Callable[[TurnRecord], None] | None = None
        self.on_barge_in: Callable[[BargeInRecord], None] | None = None

    # -- running ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start the silence and stalled-microphone timers (a task owned by the session)."""
        if self._timer is None:
            self._quiet_since = self.clock.time()
            self._timer = self.session.spawn(self._timers(), "listen-timers")

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def run(self, track: MediaStreamTrack) -> None:
        """Hear ``track`` until it ends. A failure in the listening path is logged and reported
        to the customer once; the track is then drained so the call itself goes on."""
        self.session.listener = self
        self.start()
        try:
            while True:
                frame = await track.recv()
                if isinstance(frame, av.AudioFrame):
                    await self.hear(frame)
        except MediaStreamError:
            return
        except Exception:
            log.exception(
                "session %s: listening failed; the microphone is ignored from now on", self.session.id
            )
            self.session.emit({"type": "error", "message": VOICE_UNAVAILABLE})
            with contextlib.suppress(MediaStreamError):
                while True:
                    await track.recv()
        finally:
            self.stop()

    async def hear(self, frame: av.AudioFrame, at: float | None = None) -> None:
        """One inbound frame that arrived at clock time ``at`` (default: now)."""
        now = self.clock.time() if at is None else at
        pcm, rate, channels = frame_pcm(frame)
        n = pcm.size // max(1, channels)
        self._stream_time += n / rate
        restart = self._place(now - self._stream_time, now)
        speaking = self.session.speaker.state == "speaking"
        loop = asyncio.get_running_loop()
        self._in_dsp = True
        try:
            results = await loop.run_in_executor(
                self._executor, self._dsp, pcm, rate, channels, restart, speaking, now
            )
        finally:
            self._in_dsp = False
        self._last_frame_at = now
        self.session.customer_heard(now)
        for result in results:
            self._on_window(result)

    def _place(self, origin: float, now: float) -> bool:
        """Update the inbound timeline with a frame whose stream time 0 would lie at ``origin``;
        returns whether the resampler must restart (a gap: the samples before it are dropped)."""
        cfg = self.config
        if self._offset is None or origin > self._offset + cfg.resync:
            self._offset = origin
            self._offset_at = now
            return True
        creep = self._offset + cfg.drift * max(0.0, now - self._offset_at)
        self._offset = min(origin, creep)
        self._offset_at = now
        return False

    # -- signal work (worker thread) ---------------------------------------------------------
    def _dsp(
        self, pcm: np.ndarray, rate: int, channels: int, restart: bool, speaking: bool, now: float
    ) -> list[GuardResult]:
        guard = self.guard
        self._feed_far_end(now)
        if speaking and not guard.avatar_speaking:
            guard.avatar_started(now)
        elif not speaking and guard.avatar_speaking:
            guard.avatar_stopped(now)
        partial, self._pending_partial = self._pending_partial, None
        if partial is not None:
            guard.update_partial(partial)
        if restart:
            self._resampler = StreamResampler(VAD_RATE)
            self._resampled_from = self._stream_time - pcm.size / max(1, channels) / rate
            self._resampled = 0
        audio16 = self._resampler.push(pcm, rate, channels)
        # Output sample k of the resampler lies at input stream time k / 16 kHz (its contract).
        assert self._offset is not None
        t = self._offset + self._resampled_from + self._resampled / VAD_RATE
        self._resampled += audio16.size
        return [guard.push(window) for window in self._vad.push(audio16, t)]

    def _feed_far_end(self, now: float) -> None:
        """Hand the echo guard what the stage has played up to ``now``: the avatar's own voice,
        which may come back through the customer's microphone."""
        end = int(now * AUDIO_RATE)
        start = self._far_sample
        if start is None or end - start > 2 * AUDIO_RATE:
            start = max(0, end - AUDIO_RATE // 50)
        if end > start:
            audio = self.session.stage.read_audio(start, end - start)
            self.guard.push_far_end(audio, AUDIO_RATE, start / AUDIO_RATE)
            self._far_sample = end

    # -- decisions (event loop) -------------------------------------------------------------
    def _on_window(self, result: GuardResult) -> None:
        for event in result.events:
            if isinstance(event, BargeIn):
                self._barge_in(event)
            elif isinstance(event, Backchannel):
                log.debug("session %s: backchannel at %.2f let pass", self.session.id, event.onset)
        frame = result.frame
        ep = self.endpointer
        neg = self.config.endpoint.neg_threshold
        self._vad_silent = frame.probability < neg
        quiet = self._level.push(frame, not self._vad_silent)
        events = ep.push(frame)
        self._frames.append(frame)
        if ep.state is EndpointState.SPEAKING and frame.probability >= neg:
            self._speech_end = frame.end
            if not quiet:
                self._sound_end = frame.end
        if frame.probability >= self.config.endpoint.threshold:
            self._last_voice = frame.end
        self._handle(events)
        if ep.state is EndpointState.SPEAKING:
            if frame.probability < neg and frame.end - self._speech_end >= self.config.pause_gap - 1e-9:
                self._speculate_at_pause()
            elif quiet and abs(frame.start - self._sound_end) < 1e-6:
                self._speculate_at_sound_end(frame.end)
            self._maybe_partial(frame.end)
        self._maybe_commit_early()

    def _handle(self, events: list[EndpointEvent]) -> None:
        for event in events:
            if isinstance(event, SpeechStarted):
                if event.continues_turn:
                    self._spec = None  # the customer went on: that speculation is stale
                else:
                    self._new_turn(event)
            elif isinstance(event, SpeechEnded):
                if not self._covers(self._spec):
                    self._start_speculation(event.audio, event.t)
            elif isinstance(event, TurnEnded):
                self._turn_ended(event)

    def _new_turn(self, event: SpeechStarted) -> None:
        self._turn += 1
        self._turn_audio_start = event.t - self.config.endpoint.pre_roll
        self._turn_record = TurnRecord(self._turn, event.t, event.t)
        pending = self._pending_bargein
        # The guard decides sooner than the endpointer starts a turn, on the same speech; a
        # barge-in on speech that never became a turn (too short) does not count for this one.
        self._barged = pending is not None and pending.onset >= event.t - 0.5
        self._pending_bargein = None
        self._over_avatar = self.session.speaker.state == "speaking" and not self._barged
        self._spec = None
        self._schedule.reset()
        if not self._over_avatar:
            self.session.set_activity("listening")

    def _barge_in(self, event: BargeIn) -> None:
        now = self.clock.time()
        cut = self.session.interrupt()
        log.info(
            "session %s: barge-in (speech at %.3f, decided %.3f, interrupted %.3f)",
            self.session.id,
            event.onset,
            event.decided_at,
            now,
        )
        if self.endpointer.in_turn:
            self._barged = True
            self._over_avatar = False
        else:
            self._pending_bargein = event  # the endpointer's SpeechStarted follows
        self.session.set_activity("listening")
        if self.on_barge_in is not None:
            self.on_barge_in(
                BargeInRecord(event.onset, event.decided_at, now, cut.heard_text() if cut else None)
            )

    # -- recognition ------------------------------------------------------------------------
    def _turn_audio(self, until: float) -> np.ndarray:
        windows = [f for f in self._frames if f.start >= self._turn_audio_start - 1e-6 and f.start < until]
        if not windows:
            return np.zeros(0, dtype=np.int16)
        audio = np.concatenate([f.audio for f in windows])
        return audio[: max(0, round((until - windows[0].start) * VAD_RATE))]

    def _recognise(self, audio: np.ndarray, speech_end: float, partial: bool) -> _Recognition:
        now = self.clock.time()
        task = self.session.spawn(
            self._transcribe(audio, partial), "recognise-partial" if partial else "recognise"
        )
        rec = _Recognition(self._turn, speech_end, now, task, partial)
        self._schedule.started(audio.size / VAD_RATE)
        task.add_done_callback(lambda _t: self._recognised(rec))
        return rec

    async def _transcribe(self, audio: np.ndarray, partial: bool) -> Transcript:
        return await self.recognizer.transcribe(audio, None, self._prompt(self._lang), partial=partial)

    def _start_speculation(self, audio: np.ndarray, speech_end: float) -> None:
        old = self._spec
        if old is not None and not old.task.done():
            old.task.cancel()  # withdrawn if it has not started; a running one is left to finish
        self._spec = self._recognise(audio, speech_end, partial=False)

    def _speculate_at_pause(self) -> None:
        if not (self.config.speculate_at_pauses and self.recognizer.supports_partial):
            return
        if self._covers(self._spec):
            return  # this pause's speech is being (or has been) recognised
        until = self._speech_end + self.config.endpoint.post_roll
        self._start_speculation(self._turn_audio(until), self._speech_end)

    def _speculate_at_sound_end(self, now: float) -> None:
        """The first quiet window after loud speech: recognise the turn so far before the VAD's
        decay tail has passed. Only while no recognition of this stream is in flight, so a
        quiet moment inside a word (a stop consonant's closure) costs at most one recognition
        at a time, and its result still shows as the live transcript."""
        if not (self.config.speculate_at_pauses and self.recognizer.supports_partial):
            return
        onset = self._turn_audio_start + self.config.endpoint.pre_roll
        if self._sound_end - onset < SOUND_END_MIN_SPEECH or self._covers(self._spec):
            return
        if any(rec is not None and not rec.task.done() for rec in (self._spec, self._partial)):
            return
        self._start_speculation(self._turn_audio(now), self._sound_end)

    def _covers(self, rec: _Recognition | None, speech_end: float | None = None) -> bool:
        """Whether ``rec`` heard all of this turn's speech so far: no loud speech since its
        audio ended, and what the VAD still called speech after it lies within its decay tail.
        ``speech_end``: where the endpointer ended the turn's speech (``TurnEnded.t``); a blip
        in the pause after it is not in the turn's audio, so it does not count."""
        last = max(self._speech_end, self._last_voice) if speech_end is None else speech_end
        return (
            rec is not None
            and rec.turn == self._turn
            and self._sound_end <= rec.speech_end + 1e-9
            and last <= rec.speech_end + VAD_TAIL
        )

    def _maybe_partial(self, now: float) -> None:
        if not (self.config.partials and self.recognizer.supports_partial):
            return
        if self._partial is not None and not self._partial.task.done():
            return
        if self._spec is not None and not self._spec.task.done():
            return
        if self._schedule.due(now - self._turn_audio_start):
            self._partial = self._recognise(self._turn_audio(now), self._speech_end, partial=True)

    def _recognised(self, rec: _Recognition) -> None:
        """A recognition finished: show it as the live transcript if its turn is still on, and
        see whether it ends the turn."""
        rec.finished = self.clock.time()
        self._schedule.finished()
        if rec.task.cancelled():
            return
        error = rec.task.exception()
        if error is not None:
            if rec.partial or rec is not self._spec:
                log.warning("session %s: speculative recognition failed: %s", self.session.id, error)
            return
        text = rec.task.result().text.strip()
        if rec.turn == self._turn and self.endpointer.in_turn and text:
            self.session.customer_partial(text)
            self.endpointer.update_partial(text)
            self._pending_partial = text
            if rec is self._spec and not self._over_avatar and reads_finished(text):
                self._prepare_answer(" ".join(text.split()))
        self._maybe_commit_early()

    def _prepare_answer(self, text: str) -> None:
        """Let the driver decide its answer to a speculative transcript that reads finished
        while the turn is being confirmed (``prepare(session, text)``, for drivers that have
        it; the brain also warms its answer's first piece). The echo's answer is the
        transcript itself: its first piece is synthesised into the TTS cache now
        (``warm_answer``); a newer speculation withdraws an older one's warm-up, so an
        abandoned speculation costs at most one piece. Nothing is said before the turn is over."""
        from avatar.drivers import warm_answer
        from avatar.session import EchoDriver

        driver = self.session.driver
        prepare = getattr(driver, "prepare", None)
        if callable(prepare):
            try:
                prepare(self.session, text)
            except Exception:
                log.exception("session %s: the driver could not prepare an answer", self.session.id)
        elif isinstance(driver, EchoDriver):
            if self._warming is not None:
                if self._warming[0] == text:
                    return
                self._warming[1].cancel()  # a no-op once it has finished
            task = warm_answer(self.session, text, None)
            self._warming = (text, task) if task is not None else None

    def _maybe_commit_early(self) -> None:
        """End the turn now if the latest speculation covers all the speech, its words read
        finished, and ``commit_question`` (a question) or ``commit_silence`` of silence followed."""
        spec = self._spec
        if not self.config.early_commit or not self.endpointer.in_turn or not self._covers(spec):
            return
        assert spec is not None
        transcript = spec.transcript()  # None until it is done: _recognised calls again
        if transcript is None or not reads_finished(transcript.text):
            return
        cfg = self.config
        due = spec.speech_end + (
            cfg.commit_question if reads_as_question(transcript.text) else cfg.commit_silence
        )
        if self.clock.time() < due - 1e-9:
            self._check_commit_at(due)  # on time, not at whichever window comes next
            return
        if not self._vad_silent:
            return  # the VAD still hears speech: its next window decides
        if self._over_avatar and self.session.speaker.state == "speaking":
            return  # the endpointer's end of turn decides what to make of it
        self.endpointer.reset()
        self._finish(spec, "early", reused=True)

    def _check_commit_at(self, due: float) -> None:
        """Run ``_maybe_commit_early`` again at clock time ``due`` (one pending check)."""
        pending = self._commit_check
        if pending is not None and not pending[1].done():
            if abs(pending[0] - due) < 1e-9:
                return
            pending[1].cancel()

        async def check() -> None:
            await self.clock.sleep_until(due)
            self._maybe_commit_early()

        self._commit_check = (due, self.session.spawn(check(), "commit-check"))

    def _turn_ended(self, event: TurnEnded) -> None:
        spec = self._spec
        reused = spec is not None and self._covers(spec, event.t) and not spec.task.cancelled()
        if self._over_avatar and self.session.speaker.state == "speaking":
            # Speech over the avatar that never became a barge-in: a backchannel or noise.
            if spec is not None and not spec.task.done():
                spec.task.cancel()
            self._spec = None
            record = self._turn_record
            if record is not None:
                record.outcome, record.how, record.decided_at = "dropped", event.reason, event.decided_at
                self._report(record)
            return
        if not reused or spec is None:
            if spec is not None and not spec.task.done():
                spec.task.cancel()
            spec = self._recognise(event.audio, event.t, partial=False)
        self._finish(spec, event.reason, reused=reused)

    def _finish(self, rec: _Recognition, how: str, reused: bool) -> None:
        record = self._turn_record or TurnRecord(self._turn, rec.started, rec.speech_end)
        record.speech_end = rec.speech_end
        record.decided_at = self.clock.time()
        record.how = how
        record.recognition_started = rec.started
        record.reused_speculation = reused
        self._turn_record = None
        self._spec = None
        if self._partial is not None and not self._partial.task.done():
            self._partial.task.cancel()  # a final is what counts now
        over_avatar = self._over_avatar
        self.session.set_activity("thinking")
        self._pending_turns += 1
        self.session.spawn(self._complete(rec, record, over_avatar), "customer-turn")

    async def _complete(self, rec: _Recognition, record: TurnRecord, over_avatar: bool) -> None:
        await asyncio.wait({rec.task})
        record.recognition_done = rec.finished if math.isfinite(rec.finished) else self.clock.time()
        try:
            if rec.task.cancelled():
                record.outcome = "cancelled"
                return
            error = rec.task.exception()
            if error is not None:
                record.outcome = "failed"
                self._apologise(error)
                return
            transcript = rec.task.result()
            text = " ".join(transcript.text.split())
            record.text = text
            if transcript.lang:
                self._lang = "zh" if transcript.lang.startswith("zh") else transcript.lang
            if not text or (over_avatar and is_backchannel(text)):
                record.outcome = "empty" if not text else "dropped"
                self._settle_activity()
                return
            await self._answer(text, record)
        finally:
            self._pending_turns -= 1
            self._report(record)

    async def _answer(self, text: str, record: TurnRecord) -> None:
        async with self._reply_lock:
            record.answer_started = self.clock.time()
            record.outcome = "cancelled"
            try:
                SPEECH_END.set(record.speech_end)  # metrics: end of speech -> first audio (this task only)
                await self.session.customer_text(text)
                record.outcome = "answered"
            except Exception:
                record.outcome = "driver-error"
                raise
            finally:
                record.answer_done = self.clock.time()
                self._settle_activity()

    def _settle_activity(self) -> None:
        """After a turn is dealt with: back to idle unless the customer is speaking again or the
        answer has not started yet."""
        if self.endpointer.in_turn and not self._over_avatar:
            self.session.set_activity("listening")
        elif self.session.activity == "thinking" and not self.session.speaker.busy:
            self.session.set_activity("idle")

    def _apologise(self, error: BaseException) -> None:
        log.error("session %s: speech recognition failed: %s", self.session.id, error)
        self.session.emit({"type": "error", "message": RECOGNITION_FAILED})
        self._say("apology")
        self._settle_activity()

    def _say(self, key: str) -> Line:
        lang = "zh" if self._lang == "zh" else "en"
        line = self.session.say(LINES[key][lang], lang=lang)
        self._own_lines = [x for x in self._own_lines if x.done is not None and not x.done.done()] + [line]
        return line

    def _report(self, record: TurnRecord) -> None:
        log.info(
            "session %s: turn %d %s (%s) speech end %.3f, decided %+.0f ms, recognised %+.0f ms: %d words",
            self.session.id,
            record.turn,
            record.outcome,
            record.how,
            record.speech_end,
            (record.decided_at - record.speech_end) * 1000,
            (record.recognition_done - record.speech_end) * 1000,
            len(record.text.split()),  # never the words themselves: no personal data in logs
        )
        if self.on_turn is not None:
            self.on_turn(record)

    # -- timers -------------------------------------------------------------------------------
    async def _timers(self) -> None:
        step = self.config.timer_step
        while True:
            await self.clock.sleep_until(self.clock.time() + step)
            self.tick()

    def tick(self) -> None:
        """Timer work: end a turn when the microphone stalls (``stall_after``), stop the avatar
        when nothing comes from the customer (``Session.link_timeout``), the silence prompts."""
        now = self.clock.time()
        cfg = self.config
        if not self._in_dsp and now - self._last_frame_at > cfg.stall_after:
            self._handle(self.endpointer.tick(now))
            self._maybe_commit_early()
            # Audio flowed and stopped (a muted microphone still sends silence): with nothing
            # else from the customer either, the network is gone (``Session.check_link``).
            lost = self.session.link_lost_at
            self.session.check_link(now)
            if lost is None and self.session.link_lost_at is not None:
                self.endpointer.reset()
        if (
            self.session.activity == "listening"
            and not self.endpointer.in_turn
            and now - self._last_voice > self.config.endpoint.end_of_turn
        ):
            self.session.set_activity("idle")  # speech that never made a turn (a cough, a blip)
        if self.session.activity == "thinking" and not self._pending_turns and not self.session.speaker.busy:
            # An answer queued behind a line the avatar was already saying starts without a new
            # "speaking" state, so nothing else ends "thinking" once all has been said.
            self.session.set_activity("idle")
        self._silence_timers(now)

    def _silence_timers(self, now: float) -> None:
        """Prompt, then say goodbye to, a customer who has been silent too long.

        Silence counts from the latest activity on either side: the customer speaking or
        typing, a turn being answered, the avatar speaking (but not its own prompt)."""
        cfg = self.config
        session = self.session
        if session.link_lost_at is not None:
            return  # nobody to prompt: the customer's audio has stopped arriving
        own = any(line.done is not None and not line.done.done() for line in self._own_lines)
        busy = (
            (session.speaker.busy and not own)
            or self.endpointer.in_turn
            or session.activity != "idle"
            or self._reply_lock.locked()
        )
        since = max(now if busy else self._quiet_since, session.customer_active_at, self._last_voice)
        if since > self._quiet_since:
            self._quiet_since = since
            self._prompted = self._said_goodbye = False
        quiet = now - self._quiet_since
        close, prompt = cfg.silence_close_after, cfg.silence_prompt_after
        if close > 0 and quiet >= close and not self._said_goodbye:
            self._said_goodbye = self._prompted = True
            log.info("session %s: customer silent for %.0f s: goodbye", session.id, quiet)
            self._say("goodbye")
        elif prompt > 0 and quiet >= prompt and not self._prompted and (close <= 0 or prompt < close):
            self._prompted = True
            log.info("session %s: customer silent for %.0f s: prompt", session.id, quiet)
            self._say("prompt")


#: Packets aiortc's audio receiver holds before handing on the oldest: 1 (it needs the next
#: packet to see that a frame is whole) instead of aiortc's 4.
RECEIVE_PREFETCH = 1


def tighten_receive_buffer(pc: Any, track: MediaStreamTrack, prefetch: int = RECEIVE_PREFETCH) -> bool:
    """Make aiortc hand the customer's audio ``track`` on as soon as the next packet arrives.

    aiortc's audio receiver holds 4 packets (80 ms) in its jitter buffer before releasing the
    oldest, smoothing play-out for a listener that plays it. The listener needs no smoothing
    (it times inbound audio by arrival itself), and every 20 ms held is 20 ms later hearing the
    customer stop or cut in. Reordering is still absorbed (a frame waits for a missing one).
    aiortc has no public setting for this: on an aiortc whose receiver looks different,
    nothing changes and a warning is logged. Call it with the received track (not a relay of
    it) before media flows: when the track is announced."""
    receiver = next(
        (t.receiver for t in pc.getTransceivers() if getattr(t.receiver, "track", None) is track), None
    )
    buffer = getattr(receiver, "_RTCRtpReceiver__jitter_buffer", None)
    if buffer is None or not isinstance(getattr(buffer, "_prefetch", None), int):
        log.warning("aiortc's audio receive buffer was not found: inbound audio keeps its 80 ms delay")
        return False
    buffer._prefetch = min(buffer._prefetch, prefetch)
    return True


async def listen(session: Session, track: MediaStreamTrack, engines: Engines) -> None:
    """Hear the customer's microphone ``track`` for the life of the session, with the shared
    engines (loaded on first use, off the event loop). Without a VAD the microphone is
    drained and the customer told to type; without a recogniser each turn is apologised for."""
    from avatar.rtc.peer import drain

    try:
        vad = await asyncio.to_thread(engines.vad)
    except Exception as exc:
        log.error("session %s: voice activity detection unavailable: %s", session.id, exc)
        session.emit({"type": "error", "message": VOICE_UNAVAILABLE})
        await drain(track)
        return
    recognizer: Any
    try:
        recognizer = await asyncio.to_thread(engines.recognizer)
    except ASRError as exc:
        log.error("session %s: speech recognition unavailable: %s", session.id, exc)
        recognizer = UnavailableRecognizer(exc)
    listener = Listener(
        session,
        vad,
        recognizer,
        ListenerConfig.from_settings(engines.settings),
        prompt=engines.asr_prompt,
        executor=engines.listen_pool,
    )
    await listener.run(track)
