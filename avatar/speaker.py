"""The speaker: turns lines of text into speech on a stage, one line at a time.

It owns the producer task (TTS sentence by sentence -> lip-sync -> ``stage.schedule``)
and the queue of lines waiting to be said. ``interrupt`` is the one way to stop speech:
cancel the producer, forget queued lines, flush the stage. Captions are emitted when
each sentence starts playing, with word timings relative to that moment.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from avatar.speech.lang import is_han
from avatar.stage import MouthCurve, Segment, Stage
from avatar.timeline import Phoneme, SpeechChunk

log = logging.getLogger(__name__)

Emit = Callable[[dict[str, Any]], None]


class SpeechSource(Protocol):
    """Where spoken audio comes from: text -> sentence chunks (the TTS registry + streaming)."""

    def stream(self, text: str, lang: str | None) -> AsyncIterator[SpeechChunk]: ...


MouthBuilder = Callable[[list[Phoneme], float, str], MouthCurve]


def join_words(words: list[str]) -> str:
    """Words as text: a space between two words, none next to a Chinese one ("您好 welcome"
    reads "您好welcome" as a Chinese writer would; a mixed line keeps each script's way)."""
    text = ""
    for word in words:
        if text and word and not (is_han(text[-1]) or is_han(word[0])):
            text += " "
        text += word
    return text


@dataclass
class Line:
    """One line to say, and what became of it."""

    text: str
    lang: str | None = None
    speaker: str = "ai"
    segments: list[Segment] = field(default_factory=list)
    done: asyncio.Future[None] | None = None
    interrupted: bool = False

    def cut_back(self, sample: int) -> None:
        """Count nothing after stage sample ``sample`` as heard (it was sent, but the customer
        had stopped receiving: ``Session.lose_link``)."""
        for seg in self.segments:
            played_to = seg.cut_at if seg.cut_at is not None else seg.end
            seg.cut_at = max(seg.start, min(played_to, sample))

    def heard_text(self) -> str:
        """What the listener actually heard (by word timing) when the line was cut."""
        words: list[str] = []
        for seg in self.segments:
            words.extend(w.text for w in seg.words_heard())
        return join_words(words)


class Speaker:
    def __init__(self, stage: Stage, source: SpeechSource, mouth: MouthBuilder, emit: Emit) -> None:
        self.stage = stage
        self.source = source
        self.mouth = mouth
        self.emit = emit
        self._queue: asyncio.Queue[Line] = asyncio.Queue()
        self._current: Line | None = None
        self._task: asyncio.Task[None] | None = None
        self._line_task: asyncio.Task[None] | None = None
        self.state = "idle"
        self.on_line_done: Callable[[Line], None] | None = None
        #: The queued lines the latest ``interrupt`` dropped before a word of them was said.
        self.dropped: list[Line] = []

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="speaker")

    async def close(self) -> None:
        self.interrupt()
        if self._task is not None:
            self._task.cancel()
            _, pending = await asyncio.wait([self._task], timeout=5.0)
            if pending:
                log.warning("the speaker task did not stop within 5 s")
            self._task = None

    def say(self, text: str, lang: str | None = None, interrupt: bool = False, speaker: str = "ai") -> Line:
        """Queue ``text`` (after what is being said), or say it now when ``interrupt``."""
        if interrupt:
            self.interrupt()
        line = Line(text=text, lang=lang, speaker=speaker, done=asyncio.get_running_loop().create_future())
        self._queue.put_nowait(line)
        return line

    @property
    def busy(self) -> bool:
        return self._current is not None or not self._queue.empty()

    def interrupt(self) -> Line | None:
        """Stop speaking at once: cancel synthesis, drop queued lines, flush the stage.
        Returns the line that was cut, if one was playing."""
        cut = self._current
        if self._line_task is not None:
            self._line_task.cancel()
        self.dropped = []
        while not self._queue.empty():
            dropped = self._queue.get_nowait()
            self.dropped.append(dropped)
            dropped.interrupted = True
            if dropped.done is not None and not dropped.done.done():
                dropped.done.set_result(None)
        self.stage.flush()
        if cut is not None:
            cut.interrupted = True
        self._set_state("idle")
        return cut

    async def _run(self) -> None:
        while True:
            line = await self._queue.get()
            self._current = line
            self._line_task = asyncio.create_task(self._speak(line), name="speak-line")
            try:
                await self._line_task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # the speaker itself is being closed, not just this line
            except Exception:
                log.exception("speaking a line failed")
                self.emit({"type": "error", "message": "The avatar could not speak that line."})
            finally:
                self._line_task = None
                self._current = None
                if line.done is not None and not line.done.done():
                    line.done.set_result(None)
                if self.on_line_done is not None:
                    self.on_line_done(line)
                if self._queue.empty() and self.state != "idle":
                    self._set_state("idle")

    async def _speak(self, line: Line) -> None:
        clock = self.stage.clock
        async for chunk in self.source.stream(line.text, line.lang):
            if line.lang is None:
                line.lang = chunk.lang
            curve = self.mouth(chunk.phonemes, chunk.duration, chunk.lang)
            seg = self.stage.schedule(chunk, curve)
            line.segments.append(seg)
            # Wait for the sentence to start playing, then caption it; the next sentence is
            # being synthesised meanwhile and lands right after this one on the timeline.
            await clock.sleep_until(seg.start_time)
            self._set_state("speaking")
            self.emit(
                {
                    "type": "caption",
                    "id": seg.id,
                    "speaker": line.speaker,
                    "text": chunk.text,
                    "lang": chunk.lang,
                    "duration": round(chunk.duration, 3),
                    "words": [
                        {"text": w.text, "start": round(w.start, 3), "end": round(w.end, 3)} for w in chunk.words
                    ],
                }
            )
        await clock.sleep_until(self.stage.speaking_until())

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self.emit({"type": "state", "state": state})
