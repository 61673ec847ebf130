"""Show scripts, and ``StageShow``: what a broadcast stage says next.

A show script is YAML (documented in the README, an example in ``assets/shows/``)::

    title: Evening card show
    lang: en                  # optional default language of the lines: en or zh
    lines:
      - say: Good evening, and welcome.
        expression: smile     # optional: neutral, smile, serious, surprised, warm
        gesture: nod          # optional: nod, shake, tilt
      - pause: 1.5            # seconds of silence (0 to 600)
      - say: 今晚为大家介绍我们的新信用卡。
        lang: zh

``parse_script`` validates it all and reports every problem with its line number and field.

``StageShow`` runs one stage's programme, one item at a time, never cutting a line in
progress: answers typed by an operator first, then comments an operator picked, then the
queue of live comments (answered by the brain, with the viewer's name spoken first), then the
next step of the script. So a script pauses for live questions between its lines and resumes.
An operator takeover pauses the script (and the brain's answers) until handback; an
interruption of a script line (``POST /api/sessions/{id}/interrupt``) pauses it until
``resume``; the interrupted line is said again on resuming.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from avatar.broadcast.comments import Answerer, Comment, CommentQueue, QueueUnavailable, question_line
from avatar.face_state import FaceState
from avatar.session import Session
from avatar.stage import FaceSource

log = logging.getLogger(__name__)

MAX_SCRIPT_BYTES = 256 * 1024
MAX_LINES = 2000
MAX_LINE_CHARS = 1000
MAX_PAUSE = 600.0
#: How often (stage-clock seconds) the show looks at things that send it no signal: a
#: takeover or handback, the avatar falling quiet after someone else's line.
POLL = 0.2
HISTORY = 50

#: Expressions a line may carry: FaceState fields set while the line plays.
EXPRESSIONS: dict[str, dict[str, float]] = {
    "neutral": {"smile": 0.2, "brow": 0.0},
    "smile": {"smile": 0.85, "brow": 0.15},
    "warm": {"smile": 0.55, "brow": 0.1},
    "serious": {"smile": 0.0, "brow": -0.35},
    "surprised": {"smile": 0.3, "brow": 0.9},
}
#: Gestures: (FaceState field, amplitude in degrees, cycles per second, duration in seconds).
GESTURES: dict[str, tuple[str, float, float, float]] = {
    "nod": ("head_pitch", 6.0, 2.0, 1.0),
    "shake": ("head_yaw", 8.0, 2.0, 1.0),
    "tilt": ("head_roll", 7.0, 0.5, 1.0),
}


class ScriptError(ValueError):
    """A script that cannot be played; ``problems`` are "line N, field: message" strings."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Step:
    """One step: a line to say (``say``) or a silence (``pause`` seconds)."""

    say: str | None = None
    pause: float = 0.0
    lang: str | None = None
    expression: str | None = None
    gesture: str | None = None
    source_line: int = 0  # 1-based line in the YAML text

    def to_dict(self) -> dict[str, Any]:
        if self.say is None:
            return {"pause": self.pause}
        out: dict[str, Any] = {"say": self.say}
        for key in ("lang", "expression", "gesture"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


@dataclass(frozen=True)
class Script:
    title: str
    steps: tuple[Step, ...]
    name: str | None = None  # the shipped name it was loaded by, if any


# -- parsing -----------------------------------------------------------------------------------------
def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def parse_script(text: str, name: str | None = None) -> Script:
    """Parse and validate a show script; ``ScriptError`` lists every problem found."""
    if len(text.encode("utf-8")) > MAX_SCRIPT_BYTES:
        raise ScriptError([f"line 1, script: longer than {MAX_SCRIPT_BYTES} bytes"])
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}" if mark is not None else "line ?"
        raise ScriptError([f"{where}, script: not valid YAML: {exc.problem or exc}"]) from exc
    except yaml.YAMLError as exc:
        raise ScriptError([f"line 1, script: not valid YAML: {exc}"]) from exc
    finally:
        loader.dispose()
    if root is None:
        raise ScriptError(["line 1, script: empty"])
    problems: list[str] = []

    def scalar(node: yaml.Node) -> Any:
        return yaml.SafeLoader("").construct_object(node, deep=True)

    if not isinstance(root, yaml.MappingNode):
        raise ScriptError([f"line {_line(root)}, script: must be a mapping with 'lines' (and 'title', 'lang')"])
    fields = {str(k.value): (k, v) for k, v in root.value}
    for key, (knode, _) in fields.items():
        if key not in ("title", "lang", "lines"):
            problems.append(f"line {_line(knode)}, {key}: unknown field (expected title, lang, lines)")
    title = name or "show"
    if "title" in fields:
        value = scalar(fields["title"][1])
        if not isinstance(value, str) or not value.strip():
            problems.append(f"line {_line(fields['title'][1])}, title: must be a non-empty string")
        else:
            title = value.strip()
    default_lang: str | None = None
    if "lang" in fields:
        value = scalar(fields["lang"][1])
        if value not in ("en", "zh"):
            problems.append(f"line {_line(fields['lang'][1])}, lang: must be \"en\" or \"zh\"")
        else:
            default_lang = value
    steps: list[Step] = []
    if "lines" not in fields:
        problems.append(f"line {_line(root)}, lines: required (a list of say/pause steps)")
    else:
        lines_node = fields["lines"][1]
        if not isinstance(lines_node, yaml.SequenceNode) or not lines_node.value:
            problems.append(f"line {_line(lines_node)}, lines: must be a non-empty list")
        elif len(lines_node.value) > MAX_LINES:
            problems.append(f"line {_line(lines_node)}, lines: more than {MAX_LINES} steps")
        else:
            for index, node in enumerate(lines_node.value):
                step = _parse_step(node, index, default_lang, scalar, problems)
                if step is not None:
                    steps.append(step)
    if problems:
        raise ScriptError(problems)
    return Script(title=title, steps=tuple(steps), name=name)


def _parse_step(
    node: yaml.Node, index: int, default_lang: str | None, scalar: Callable[[yaml.Node], Any], problems: list[str]
) -> Step | None:
    where = f"lines[{index}]"
    if not isinstance(node, yaml.MappingNode):
        problems.append(f"line {_line(node)}, {where}: must be a mapping with 'say' or 'pause'")
        return None
    fields = {str(k.value): v for k, v in node.value}
    start = len(problems)
    for key, _ in node.value:
        if str(key.value) not in ("say", "pause", "lang", "expression", "gesture"):
            problems.append(
                f"line {_line(key)}, {where}.{key.value}: unknown field (expected say, pause, lang, expression, gesture)"
            )
    if ("say" in fields) == ("pause" in fields):
        problems.append(f"line {_line(node)}, {where}: needs exactly one of 'say' or 'pause'")
        return None
    if "pause" in fields:
        value = scalar(fields["pause"])
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= MAX_PAUSE \
                or not math.isfinite(value):
            problems.append(f"line {_line(fields['pause'])}, {where}.pause: must be a number of seconds from 0 to "
                            f"{MAX_PAUSE:g}")
        for key in ("lang", "expression", "gesture"):
            if key in fields:
                problems.append(f"line {_line(fields[key])}, {where}.{key}: only a 'say' step takes {key}")
        if len(problems) > start:
            return None
        return Step(pause=float(value), source_line=_line(node))
    text = scalar(fields["say"])
    if not isinstance(text, str) or not text.strip():
        problems.append(f"line {_line(fields['say'])}, {where}.say: must be a non-empty string")
    elif len(text) > MAX_LINE_CHARS:
        problems.append(f"line {_line(fields['say'])}, {where}.say: longer than {MAX_LINE_CHARS} characters")
    lang = default_lang
    if "lang" in fields:
        lang = scalar(fields["lang"])
        if lang not in ("en", "zh"):
            problems.append(f"line {_line(fields['lang'])}, {where}.lang: must be \"en\" or \"zh\"")
    extras: dict[str, str | None] = {"expression": None, "gesture": None}
    for key, known in (("expression", EXPRESSIONS), ("gesture", GESTURES)):
        if key in fields:
            value = scalar(fields[key])
            if value not in known:
                problems.append(f"line {_line(fields[key])}, {where}.{key}: unknown {key} {value!r} "
                                f"(one of {', '.join(sorted(known))})")
            else:
                extras[key] = value
    if len(problems) > start:
        return None
    return Step(say=" ".join(str(text).split()), lang=lang, expression=extras["expression"],
                gesture=extras["gesture"], source_line=_line(node))


def shipped_shows_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "assets" / "shows"


def shipped_names(shows_dir: Path | None = None) -> list[str]:
    folder = shows_dir or shipped_shows_dir()
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def load_script(source: str, shows_dir: Path | None = None) -> Script:
    """``source`` is a shipped show's name (a file ``<name>.yaml`` in ``assets/shows/``) or the
    YAML text of a script."""
    folder = shows_dir or shipped_shows_dir()
    name = source.strip()
    if name and "\n" not in name and name.replace("-", "").replace("_", "").isalnum():
        path = folder / f"{name}.yaml"
        if path.is_file():
            return parse_script(path.read_text(encoding="utf-8"), name=name)
        if ":" not in name:
            known = ", ".join(shipped_names(folder)) or "none"
            raise ScriptError([f"line 1, script: no shipped show {name!r} (shipped: {known})"])
    return parse_script(source)


# -- expressions and gestures ---------------------------------------------------------------------------
class ExpressionFace:
    """The stage's own face source with an expression held and a gesture played from ``start``."""

    def __init__(self, base: FaceSource, start: float, expression: str | None, gesture: str | None) -> None:
        self.base = base
        self.start = start
        self.expression = EXPRESSIONS.get(expression or "", {})
        self.gesture = GESTURES.get(gesture or "")

    def state_at(self, t: float, speaking: float = 0.0) -> FaceState:
        state = self.base.state_at(t, speaking=speaking)
        changes: dict[str, float] = dict(self.expression)
        if self.gesture is not None:
            field_name, amplitude, rate, duration = self.gesture
            dt = t - self.start
            if 0.0 <= dt < duration:
                envelope = math.sin(math.pi * dt / duration)  # eases in and out: no jump
                offset = amplitude * envelope * math.sin(2 * math.pi * rate * dt)
                changes[field_name] = float(getattr(state, field_name)) + offset
        return replace(state, **changes) if changes else state  # type: ignore[arg-type]


# -- the show ---------------------------------------------------------------------------------------------
@dataclass
class _HandAnswer:
    comment: Comment
    text: str
    operator: str


class StageShow:
    """One stage's programme: live comments and a show script, one item at a time.

    ``on_change(show)`` is called whenever the queue, the script's state or what is on air
    changes (the operators' panel is told). The run loop is a task owned by the session
    (``start``), so it ends with the stage.
    """

    def __init__(
        self,
        session: Session,
        queue: CommentQueue,
        answerer: Answerer,
        on_change: Callable[[StageShow], None] | None = None,
        poll: float = POLL,
    ) -> None:
        self.session = session
        self.queue = queue
        self.answerer = answerer
        self.on_change = on_change
        self.poll = poll
        self.script: Script | None = None
        self.position = 0  # index of the next script step
        self.script_state = "none"  # none, playing, paused, finished, stopped
        self.pause_reason: str | None = None  # "takeover", "interrupted", "operator"
        self.on_air: dict[str, Any] | None = None
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self._picked: deque[Comment] = deque()
        self._by_hand: deque[_HandAnswer] = deque()
        self._pause_until: float | None = None
        self._queue_away = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- control --------------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = self.session.spawn(self._run(), "stage-show")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def push(self, comment: Comment) -> int | None:
        """Queue an accepted comment: its 1-based place among the comments to be answered
        (picked ones first), or None when the queue is full."""
        position = await self.queue.push(comment)
        if position is None:
            return None
        self._changed()
        return len(self._picked) + position

    def queued(self) -> None:
        """Another process put a comment in this stage's (shared) queue: look at it now."""
        self._changed()

    async def waiting(self) -> list[Comment]:
        """Comments to be answered, in the order they will be: picked ones first."""
        return list(self._picked) + await self.queue.list()

    async def pick(self, comment_id: str) -> Comment | None:
        """Answer this comment next (after the line in progress)."""
        comment = await self.queue.remove(comment_id)
        if comment is None:
            return None
        self._picked.append(comment)
        self._changed()
        return comment

    async def skip(self, comment_id: str, operator: str) -> Comment | None:
        comment = await self.queue.remove(comment_id) or self._take_picked(comment_id)
        if comment is None:
            return None
        self._done(comment, "skipped", by=operator)
        return comment

    async def answer_by_hand(self, comment_id: str, text: str, operator: str) -> Comment | None:
        """The operator answers: the question, then ``text``, in the avatar's voice, next."""
        comment = await self.queue.remove(comment_id) or self._take_picked(comment_id)
        if comment is None:
            return None
        self._by_hand.append(_HandAnswer(comment, text, operator))
        self._changed()
        return comment

    def play(self, script: Script) -> None:
        """Play ``script`` from its start (replacing any script playing)."""
        self.script = script
        self.position = 0
        self._pause_until = None
        self.script_state = "playing"
        self.pause_reason = None
        self._changed()

    def stop_script(self) -> bool:
        """Stop the script (the line in progress finishes). False when none was playing or paused."""
        if self.script_state not in ("playing", "paused"):
            return False
        self.script_state = "stopped"
        self.pause_reason = None
        self._pause_until = None
        self._changed()
        return True

    def pause_script(self, reason: str = "operator") -> bool:
        if self.script_state != "playing":
            return False
        self.script_state = "paused"
        self.pause_reason = reason
        self._changed()
        return True

    def resume_script(self) -> bool:
        if self.script_state != "paused":
            return False
        self.script_state = "playing"
        self.pause_reason = None
        self._changed()
        return True

    async def describe(self) -> dict[str, Any]:
        """The programme for the operators' panel (``QueueUnavailable`` when the shared queue is away)."""
        return {
            "stage_id": self.session.id,
            "comments": [c.to_dict() for c in await self.waiting()],
            "on_air": self.on_air,
            "history": list(self.history),
            "script": self.describe_script(),
        }

    def describe_script(self) -> dict[str, Any]:
        script = self.script
        return {
            "state": self.script_state,
            "reason": self.pause_reason,
            "title": script.title if script else None,
            "name": script.name if script else None,
            "position": self.position,
            "steps": len(script.steps) if script else 0,
        }

    # -- the loop ---------------------------------------------------------------------------------
    def _held(self) -> bool:
        """Whether the operator desk holds the stage (an operator took it over, or it waits for one)."""
        from avatar.operator.takeover import HoldingDriver, OperatorDriver

        return isinstance(self.session.driver, OperatorDriver | HoldingDriver)

    def _brain_answers(self) -> bool:
        """Whether comments are answered without an operator: not while the desk holds the stage,
        nor on a stage made to be driven by an operator (``"driver": "operator"``)."""
        return getattr(self.session.driver, "name", "") not in ("operator", "waiting")

    async def _run(self) -> None:
        while True:
            if self._held() and self.script_state == "playing":
                self.pause_script("takeover")
            elif not self._held() and self.script_state == "paused" and self.pause_reason == "takeover":
                self.resume_script()
            if self.session.speaker.busy:  # someone else's line: never cut in
                await self._wait()
                continue
            if self._by_hand:
                await self._answer_by_hand(self._by_hand.popleft())
                continue
            if self._brain_answers():
                comment = self._picked.popleft() if self._picked else await self._pop()
                if comment is not None:
                    await self._answer(comment)
                    continue
            if not self._held() and self.script_state == "playing" and await self._script_step():
                continue
            await self._wait()

    async def _pop(self) -> Comment | None:
        """The oldest queued comment; None while the shared queue is away (the show goes on)."""
        try:
            comment = await self.queue.pop()
        except QueueUnavailable as exc:
            if not self._queue_away:
                log.warning("stage %s: the comment queue is unreachable (%s); trying again", self.session.id, exc)
            self._queue_away = True
            return None
        self._queue_away = False
        return comment

    async def _wait(self, until: float | None = None) -> None:
        """Until something changes, or ``poll`` (or ``until``) on the stage clock."""
        clock = self.session.stage.clock
        deadline = clock.time() + self.poll if until is None else min(until, clock.time() + self.poll)
        self._wake.clear()
        woken = asyncio.ensure_future(self._wake.wait())
        slept = asyncio.ensure_future(clock.sleep_until(deadline))
        try:
            await asyncio.wait({woken, slept}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()
            slept.cancel()

    async def _say(self, text: str, lang: str | None, speaker: str = "ai") -> bool:
        """Say one line and wait until it has played; False when it was cut."""
        line = self.session.say(text, lang=lang, speaker=speaker)
        if line.done is not None:
            await asyncio.shield(line.done)
        return not line.interrupted

    async def _answer(self, comment: Comment) -> None:
        self.on_air = {"kind": "comment", "comment": comment.to_dict(), "by": "ai"}
        self._changed()
        try:
            try:
                answer = await self.answerer.answer(comment)
            except Exception:
                log.exception("stage %s: no answer for comment %s", self.session.id, comment.id)
                self._done(comment, "failed")
                return
            if answer is None:
                self._done(comment, "unanswered")
                return
            if not self._brain_answers():
                self._picked.appendleft(comment)  # an operator took over meanwhile: theirs to handle
                return
            # Another line may have started while the answer was being written: wait for it.
            while self.session.speaker.busy:
                await self._wait()
            heard = await self._say(question_line(comment), comment.lang)
            heard = heard and await self._say(answer[0], answer[1])
            self._done(comment, "answered" if heard else "interrupted", answer=answer[0])
        finally:
            self.on_air = None
            self._changed()

    async def _answer_by_hand(self, item: _HandAnswer) -> None:
        comment = item.comment
        self.on_air = {"kind": "comment", "comment": comment.to_dict(), "by": item.operator}
        self._changed()
        try:
            heard = await self._say(question_line(comment), comment.lang, speaker=item.operator)
            heard = heard and await self._say(item.text, None, speaker=item.operator)
            self._done(comment, "answered" if heard else "interrupted", by=item.operator, answer=item.text)
        finally:
            self.on_air = None
            self._changed()

    async def _script_step(self) -> bool:
        """Play the next script step; False when the loop should wait instead (a pause running)."""
        script = self.script
        assert script is not None
        if self.position >= len(script.steps):
            self.script_state = "finished"
            self._changed()
            return True
        step = script.steps[self.position]
        clock = self.session.stage.clock
        if step.say is None:
            if self._pause_until is None:
                self._pause_until = clock.time() + step.pause
            if clock.time() < self._pause_until:
                await self._wait(until=self._pause_until)
                return True
            self._pause_until = None
            self.position += 1
            self._changed()
            return True
        self.on_air = {"kind": "script", "position": self.position, "step": step.to_dict()}
        self._changed()
        stage = self.session.stage
        face = None
        if (step.expression or step.gesture) and stage.face_override is None:
            face = ExpressionFace(stage.idle, clock.time(), step.expression, step.gesture)
            stage.face_override = face
        try:
            heard = await self._say(step.say, step.lang)
        finally:
            if face is not None and stage.face_override is face:
                stage.face_override = None
            self.on_air = None
        if heard:
            self.position += 1
        elif self.script_state == "playing":
            # Cut by someone else: a takeover, or an interruption. The line is said again on resuming.
            self.pause_script("takeover" if self._held() else "interrupted")
        self._changed()
        return True

    # -- bookkeeping ---------------------------------------------------------------------------------
    def _take_picked(self, comment_id: str) -> Comment | None:
        for comment in self._picked:
            if comment.id == comment_id:
                self._picked.remove(comment)
                return comment
        return None

    def _done(self, comment: Comment, status: str, by: str = "ai", answer: str | None = None) -> None:
        entry: dict[str, Any] = {**comment.to_dict(), "status": status, "by": by}
        if answer is not None:
            entry["answer"] = answer
        self.history.appendleft(entry)
        self._changed()

    def _changed(self) -> None:
        self._wake.set()
        if self.on_change is not None:
            try:
                self.on_change(self)
            except Exception:
                log.exception("stage %s: show listener failed", self.session.id)
