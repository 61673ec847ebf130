"""A session: one conversation. A customer peer, a stage, a speaker, a transcript and the
current driver (the AI brain, an operator, a script). Takeover is a driver switch; the
stage, voice and face stay as they are, so the customer cannot tell.

The state the page shows is one value: ``speaking`` while the avatar's voice plays,
otherwise the conversation's activity: ``listening`` while the customer holds the turn,
``thinking`` from the end of their turn until the answer starts, ``idle`` between turns.
The speaker reports its own state; the listener (``avatar.listener``) sets the activity.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from avatar.clock import AUDIO_RATE
from avatar.logs import session_context
from avatar.speaker import Line, Speaker
from avatar.stage import Stage
from avatar.timeline import SpeechChunk

log = logging.getLogger(__name__)

MAX_TEXT_CHARS = 1000
#: How long closing a session waits for its tasks to stop.
CLOSE_TIMEOUT = 5.0


class Driver(Protocol):
    """Decides what the avatar says in answer to the customer."""

    name: str

    async def on_customer_text(self, session: Session, text: str) -> None: ...


class EchoDriver:
    """Says the customer's words back: the whole path visible without a brain."""

    name = "echo"

    async def on_customer_text(self, session: Session, text: str) -> None:
        session.say(text)


@dataclass
class TranscriptEntry:
    speaker: str  # "customer", "ai", or an operator's name
    text: str
    at: float  # wall-clock time (epoch seconds)
    interrupted: bool = False
    meta: dict[str, Any] = field(default_factory=dict)
    started: float | None = None  # when the utterance began (epoch seconds); ``at`` is its end


class EventSink(Protocol):
    """Where session events go (the customer's data channel, operator subscribers)."""

    def __call__(self, message: dict[str, Any]) -> None: ...


class Session:
    def __init__(
        self,
        stage: Stage,
        speaker_factory: Callable[[Stage, Callable[[dict[str, Any]], None]], Speaker],
        driver: Driver,
        avatar: str,
        session_id: str | None = None,
    ) -> None:
        self.id = session_id or uuid.uuid4().hex[:16]
        self.avatar = avatar
        self.stage = stage
        self.driver = driver
        self.created = time.time()
        self.transcript: list[TranscriptEntry] = []
        self._sinks: list[EventSink] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._replies: set[asyncio.Task[Any]] = set()  # drivers answering the customer now
        self.activity = "idle"  # "idle", "listening" or "thinking" (see the module docstring)
        self._published_state = "idle"
        # The speaker's state events pass through the session, which merges in the activity.
        self.speaker = speaker_factory(stage, self._speaker_event)
        self.speaker.on_line_done = self._line_done
        self.closed = asyncio.Event()
        self.last_customer_text: str | None = None
        #: Stage-clock time of the customer's latest typed or spoken line (silence timers).
        self.customer_active_at = stage.clock.time()
        self.mode = "call"
        self.listener: Any = None  # the avatar.listener.Listener hearing the customer's microphone
        self.last_reply: dict[str, Any] | None = None  # the brain's last reply (for operators)
        self.handoff_reason: str | None = None  # set while the session waits for a human
        self.customer_id: str | None = None  # the bank's customer id, when the page passes one
        #: Stage-clock time the customer was last heard from: their microphone's audio, or a
        #: receiver report on the avatar's media (``avatar.rtc.link``); ``None`` before either.
        self.heard_at: float | None = None
        #: Seconds of nothing from the customer after which their link is taken as lost.
        self.link_timeout = 3.0
        #: ``heard_at`` when the link was taken as lost (``lose_link``); ``None`` while it holds.
        self.link_lost_at: float | None = None
        self._lines: list[Line] = []  # lines said and not yet finished (word boundaries)
        # Observers (the operator desk): each transcript entry as it is recorded; handoff requests.
        self.recorders: list[Callable[[Session, TranscriptEntry], None]] = []
        self.handoff_listeners: list[Callable[[Session, str], None]] = []
        #: Told when the customer's link is taken as lost: (session, queued lines dropped unsaid,
        #: lines recorded as said that ended after the customer's last sign of life).
        self.link_listeners: list[Callable[[Session, list[Line], list[Line]], None]] = []
        self._finished: deque[Line] = deque(maxlen=16)  # lines said lately (for lose_link)

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        self.speaker.start()

    async def close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        await self.speaker.close()
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        if tasks:
            # Bounded: a task that ignores cancellation must not keep a session (or the server's
            # shutdown) hanging; it is logged instead.
            _, pending = await asyncio.wait(tasks, timeout=CLOSE_TIMEOUT)
            for task in pending:
                log.warning("session %s: task %s did not stop within %.0f s", self.id, task.get_name(), CLOSE_TIMEOUT)
        self._sinks.clear()

    def spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        """Run ``coro`` as a task owned by this session (cancelled and awaited on close)."""
        # Every line the task logs names this session (avatar.logs: the JSON logs' session_id).
        task = asyncio.create_task(coro, name=f"{name}:{self.id}", context=session_context(self.id))
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("session %s task %s failed", self.id, task.get_name(), exc_info=task.exception())

    # -- events --------------------------------------------------------------------------
    def add_sink(self, sink: EventSink) -> None:
        self._sinks.append(sink)

    def remove_sink(self, sink: EventSink) -> None:
        with contextlib.suppress(ValueError):
            self._sinks.remove(sink)

    def emit(self, message: dict[str, Any]) -> None:
        message.setdefault("session_id", self.id)
        for sink in list(self._sinks):
            try:
                sink(message)
            except Exception:
                log.exception("session %s: event sink failed", self.id)

    # -- speech ----------------------------------------------------------------------------
    def say(self, text: str, interrupt: bool = False, lang: str | None = None, speaker: str = "ai") -> Line:
        line = self.speaker.say(text, lang=lang, interrupt=interrupt, speaker=speaker)
        self._lines = [x for x in self._lines if x.done is None or not x.done.done()] + [line]
        return line

    def word_end(self, within: float = 1.0) -> float | None:
        """Stage-clock time when the word playing now ends (None when no word is playing: between
        sentences, or before the first audio). Capped at ``within`` seconds from now."""
        clock = self.stage.clock
        now = clock.time()
        for line in self._lines:
            for seg in line.segments:
                if seg.cut_at is not None or not seg.start_time <= now < seg.end_time:
                    continue
                into = now - seg.start_time
                ends = [w.end for w in seg.chunk.words if w.end > into]
                if not ends:
                    return None  # trailing silence of the sentence
                return seg.start_time + min(min(ends), into + within)
        return None

    async def finish_word(self, within: float = 1.0) -> Line | None:
        """Stop the avatar at the end of the word it is saying (not the whole line): the
        driver's answer in progress is cancelled at once, so nothing new is queued; the cut
        itself (``interrupt``) lands on the word boundary. Returns the line that was cut."""
        current = asyncio.current_task()
        for task in list(self._replies):
            if task is not current and not task.done():
                task.cancel()
        end = self.word_end(within)
        if end is not None:
            # The cut lands where the audio tracks have read up to: at the boundary, or up to one
            # 20 ms frame after it (the word is always whole).
            await self.stage.clock.sleep_until(end)
        return self.interrupt()

    def customer_heard(self, at: float) -> None:
        """Something from the customer arrived at stage-clock time ``at``."""
        if self.heard_at is None or at > self.heard_at:
            self.heard_at = at
            if self.link_lost_at is not None and at > self.link_lost_at:
                self.link_back()

    def check_link(self, now: float) -> None:
        """Take the link as lost when nothing came from the customer for ``link_timeout``."""
        if self.heard_at is not None and self.link_lost_at is None and now - self.heard_at > self.link_timeout:
            self.lose_link(self.heard_at)

    def lose_link(self, at: float) -> Line | None:
        """Nothing has come from the customer since stage-clock time ``at`` (a network cut, most
        likely: what the avatar sends goes nowhere either). The avatar stops,
        and the line in progress is recorded as heard up to ``at``, marked interrupted, not up
        to now; an answer being decided is dropped. Returns the line cut, if any."""
        self.link_lost_at = at
        talking = self.speaker.busy or bool(self._replies)
        cut = self.interrupt() if talking else None
        if cut is not None:
            cut.cut_back(int(at * AUDIO_RATE))
        dropped = list(self.speaker.dropped) if talking else []
        # Lines that ended after the last sign of life were recorded as said whole, and the
        # audit trail cannot be rewritten: name them (the link_lost event) as perhaps unheard.
        late = [
            line
            for line in self._finished
            if not line.interrupted and line.segments and max(seg.end_time for seg in line.segments) > at
        ]
        log.warning(
            "session %s: nothing from the customer for %.1f s: connection lost? the avatar stopped",
            self.id,
            self.stage.clock.time() - at,
        )
        for listener in list(self.link_listeners):
            try:
                listener(self, dropped, late)
            except Exception:
                log.exception("session %s: link listener failed", self.id)
        return cut

    def link_back(self) -> None:
        """The customer is heard from again after ``lose_link``."""
        if self.link_lost_at is not None:
            log.info("session %s: the customer is back", self.id)
            self.link_lost_at = None
            # Silence timers start over: the outage was not the customer keeping quiet.
            self.customer_active_at = max(self.customer_active_at, self.stage.clock.time())

    def interrupt(self) -> Line | None:
        """Stop the avatar at once: cancel the driver's answer in progress (so it cannot queue
        more lines), drop queued lines and flush the stage. Returns the line that was cut; the
        transcript records what of it was heard, marked interrupted, once the speaker lets go
        of it. A driver calling this from its own answer is not cancelled."""
        current = asyncio.current_task()
        for task in list(self._replies):
            if task is not current and not task.done():
                task.cancel()
        return self.speaker.interrupt()

    @property
    def state(self) -> str:
        return "speaking" if self.speaker.state == "speaking" else self.activity

    def set_activity(self, activity: str) -> None:
        """Set what the conversation is doing besides the avatar speaking ("idle", "listening",
        "thinking"); a ``state`` event goes out when the page's state changes."""
        if activity not in ("idle", "listening", "thinking"):
            raise ValueError(f"unknown activity {activity!r}")
        self.activity = activity
        self._publish_state()

    def _speaker_event(self, message: dict[str, Any]) -> None:
        if message.get("type") != "state":
            self.emit(message)
            return
        if message.get("state") == "speaking" and self.activity == "thinking":
            self.activity = "idle"  # the answer has started
        self._publish_state()

    def _publish_state(self) -> None:
        state = self.state
        if state != self._published_state:
            self._published_state = state
            self.emit({"type": "state", "state": state})

    def request_handoff(self, reason: str) -> None:
        """The AI cannot help: mark the session as waiting for a human operator."""
        self.handoff_reason = reason
        log.info("session %s waits for a human: %s", self.id, reason)
        for listener in list(self.handoff_listeners):
            listener(self, reason)

    def record(self, entry: TranscriptEntry) -> None:
        """Append to the transcript and tell the recorders (the audit trail) at once."""
        self.transcript.append(entry)
        for recorder in list(self.recorders):
            try:
                recorder(self, entry)
            except Exception:
                log.exception("session %s: transcript recorder failed", self.id)

    def _line_done(self, line: Line) -> None:
        self._finished.append(line)
        text = line.heard_text() if line.interrupted else line.text
        if line.interrupted and not text:
            return  # cut before a word was heard
        now = time.time()
        heard = sum(((s.cut_at if s.cut_at is not None else s.end) - s.start) / AUDIO_RATE for s in line.segments)
        self.record(
            TranscriptEntry(speaker=line.speaker, text=text, at=now, interrupted=line.interrupted, started=now - heard)
        )
        self.emit(
            {"type": "transcript", "speaker": line.speaker, "text": text, "final": True, "interrupted": line.interrupted}
        )

    # -- the customer ------------------------------------------------------------------
    async def customer_text(self, text: str) -> None:
        """A line typed or spoken by the customer: record it, hand it to the driver.

        The driver's answer runs in the calling task; ``interrupt`` cancels it (the customer
        cut in), which ends this call with ``CancelledError``."""
        self.last_customer_text = text
        self.customer_active_at = self.stage.clock.time()
        self.record(TranscriptEntry(speaker="customer", text=text, at=time.time()))
        self.emit({"type": "transcript", "speaker": "customer", "text": text, "final": True})
        if self.link_lost_at is not None:
            # Their words were heard before the line went (a recognition that finished late):
            # kept in the transcript, not answered into the void; they can ask again once back.
            log.info("session %s: a customer line came after their connection was lost: not answered", self.id)
            return
        task = asyncio.current_task()
        if task is not None:
            self._replies.add(task)
        try:
            await self.driver.on_customer_text(self, text)
        finally:
            if task is not None:
                self._replies.discard(task)

    def customer_partial(self, text: str) -> None:
        """What the customer has said so far in the turn in progress (a provisional transcript)."""
        self.customer_active_at = self.stage.clock.time()
        self.emit({"type": "transcript", "speaker": "customer", "text": text, "final": False})

    def handle_message(self, raw: str | bytes) -> None:
        """A message from the customer's ``events`` data channel. Bad messages get an ``error``
        event back; they never raise."""
        if self.heard_at is not None:  # a sign of life for a watch already on; never starts one
            self.customer_heard(self.stage.clock.time())
        try:
            message = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            self.emit({"type": "error", "message": "messages must be JSON objects"})
            return
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            self.emit({"type": "error", "message": "messages need a string 'type'"})
            return
        kind = message["type"]
        if kind == "text":
            text = message.get("text")
            if not isinstance(text, str) or not text.strip():
                self.emit({"type": "error", "message": "'text' must be a non-empty string"})
                return
            if len(text) > MAX_TEXT_CHARS:
                self.emit({"type": "error", "message": f"'text' is longer than {MAX_TEXT_CHARS} characters"})
                return
            self.spawn(self.customer_text(text.strip()), "customer-text")
        elif kind == "ping":
            self.emit({"type": "pong"})
        else:
            self.emit({"type": "error", "message": f"unknown message type {kind!r}"})

    def describe(self) -> dict[str, Any]:
        return {
            "session_id": self.id,
            "avatar": self.avatar,
            "state": self.state,
            "driver": self.driver.name,
            "created": self.created,
            "last_customer_text": self.last_customer_text,
            "handoff_reason": self.handoff_reason,
        }

    def transcript_dicts(self) -> list[dict[str, Any]]:
        """The stored transcript as JSON-ready dicts: speaker, text, at (epoch s), interrupted."""
        return [
            {"speaker": e.speaker, "text": e.text, "at": e.at, "interrupted": e.interrupted} for e in self.transcript
        ]


class TTSSpeechSource:
    """Adapts the TTS registry to the speaker: each sentence, or each clause in the other
    script, is spoken by the avatar's voice for its language (``split_by_lang``); ``lang``
    (the caller's) or else ``default_lang`` only decides parts with neither script (digits)."""

    def __init__(self, registry: Any, avatar: str, default_lang: str) -> None:
        self.registry = registry
        self.avatar = avatar
        self.default_lang = default_lang

    def _voice(self, lang: str | None) -> Any:
        """The voice for parts with neither script: ``lang`` or the default language decides."""
        fallback = lang or self.default_lang
        return self.registry.voice_for(self.avatar, "zh" if fallback == "zh" else "en")

    def _voice_for(self, part_lang: str) -> Any:
        return self.registry.voice_for(self.avatar, part_lang)

    async def stream(self, text: str, lang: str | None) -> AsyncIterator[SpeechChunk]:
        from avatar.speech.tts.stream import speak_stream

        chunks = speak_stream(self.registry, text, self._voice(lang), voice_for=self._voice_for)
        async with contextlib.aclosing(chunks) as pieces:
            async for chunk in pieces:
                yield chunk

    async def warm(self, text: str, lang: str | None) -> None:
        """Synthesise into the TTS cache the first piece ``stream(text, lang)`` will speak (same
        voices, same first-piece cut), so speaking it later finds it cached or in flight."""
        from avatar.speech.tts.stream import warm_first_piece

        await warm_first_piece(self.registry, text, self._voice(lang), voice_for=self._voice_for)
