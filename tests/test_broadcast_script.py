"""Show scripts: parsing and validation (line and field in every error), and ``StageShow`` playing
a script on a stage on a fake clock: comments answered between lines, an interruption and a
takeover pausing it, resuming, stopping, expressions held while a line plays."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from avatar.broadcast.comments import Comment, EchoAnswerer, MemoryCommentQueue, QueueUnavailable
from avatar.broadcast.script import (
    ExpressionFace,
    ScriptError,
    StageShow,
    load_script,
    parse_script,
    shipped_names,
)
from avatar.clock import FakeClock
from avatar.operator.takeover import OperatorDriver
from avatar.session import EchoDriver, Session
from avatar.speaker import Speaker
from avatar.stage import Stage
from tests.stage_fakes import PlainRenderer, RampMouth, StillFace, ToneSource

SCRIPT = """\
title: Card show
lang: en
lines:
  - say: Welcome to the show
    expression: smile
    gesture: nod
  - say: Here is our new card
  - pause: 1
  - say: Thank you for watching
"""


# -- parsing ------------------------------------------------------------------------------------------
def test_parse_valid_script() -> None:
    script = parse_script(SCRIPT)
    assert script.title == "Card show"
    assert [s.say for s in script.steps] == ["Welcome to the show", "Here is our new card", None, "Thank you for watching"]
    assert script.steps[0].expression == "smile" and script.steps[0].gesture == "nod" and script.steps[0].lang == "en"
    assert script.steps[2].pause == 1.0
    assert script.steps[1].source_line == 7


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("lines:\n  - say: hi\n  - pause: -2\n", "line 3, lines[1].pause: must be a number"),
        ("lines:\n  - say: hi\n  - pause: forever\n", "line 3, lines[1].pause"),
        ("lines:\n  - say: hi\n    gesture: juggle\n", "line 3, lines[0].gesture: unknown gesture 'juggle'"),
        ("lines:\n  - say: hi\n    expression: angry\n", "line 3, lines[0].expression: unknown expression"),
        ("lines:\n  - say: hi\n    lang: fr\n", "line 3, lines[0].lang: must be"),
        ("lines:\n  - say: hi\n    pause: 2\n", "line 2, lines[0]: needs exactly one of 'say' or 'pause'"),
        ("lines:\n  - say: ''\n", "line 2, lines[0].say: must be a non-empty string"),
        ("lines:\n  - say: hi\n    colour: red\n", "line 3, lines[0].colour: unknown field"),
        ("lines:\n  - just a string\n", "line 2, lines[0]: must be a mapping"),
        ("lines:\n  - pause: 1\n    gesture: nod\n", "line 3, lines[0].gesture: only a 'say' step"),
        ("title: x\n", "line 1, lines: required"),
        ("lines: []\n", "line 1, lines: must be a non-empty list"),
        ("lang: de\nlines:\n  - say: hi\n", "line 1, lang: must be"),
        ("speed: 2\nlines:\n  - say: hi\n", "line 1, speed: unknown field"),
        ("- say: hi\n", "line 1, script: must be a mapping"),
        ("lines:\n  - say: [unclosed\n", "script: not valid YAML"),
        ("", "line 1, script: empty"),
    ],
)
def test_validation_errors_name_line_and_field(text: str, expected: str) -> None:
    with pytest.raises(ScriptError) as info:
        parse_script(text)
    assert expected in str(info.value), str(info.value)


def test_every_problem_is_reported() -> None:
    with pytest.raises(ScriptError) as info:
        parse_script("lines:\n  - pause: -1\n  - say: hi\n    gesture: juggle\n  - nope: 1\n")
    # The last step has an unknown field and lacks say/pause: two problems on line 5.
    assert [p.split(",")[0] for p in info.value.problems] == ["line 2", "line 4", "line 5", "line 5"]


def test_shipped_show_loads_by_name() -> None:
    names = shipped_names()
    assert "card-launch" in names
    script = load_script("card-launch")
    assert script.name == "card-launch" and len(script.steps) >= 3
    assert {s.lang for s in script.steps if s.say} == {"en", "zh"}
    with pytest.raises(ScriptError, match="no shipped show 'nothing-here'"):
        load_script("nothing-here")


def test_load_script_from_text(tmp_path: Path) -> None:
    assert load_script(SCRIPT, shows_dir=tmp_path).title == "Card show"


# -- playback ---------------------------------------------------------------------------------------------
def make_show() -> tuple[FakeClock, Session, StageShow, ToneSource]:
    fake = FakeClock()
    stage = Stage(PlainRenderer(), fake.media_clock(), StillFace(), fps=25)
    source = ToneSource(seconds=0.5)

    def speaker_factory(st: Stage, emit: object) -> Speaker:
        return Speaker(st, source, lambda ph, d, lang: RampMouth(d), emit)  # type: ignore[arg-type]

    session = Session(stage, speaker_factory, EchoDriver(), "anna")
    session.mode = "broadcast"
    session.start()
    show = StageShow(session, MemoryCommentQueue(), EchoAnswerer())
    show.start()
    return fake, session, show, source


def comment(cid: str, user: str, text: str) -> Comment:
    return Comment(id=cid, user=user, text=text, lang="en")


async def test_comment_answered_between_script_lines_without_cutting() -> None:
    fake, session, show, source = make_show()
    try:
        show.play(parse_script(SCRIPT))
        await fake.run_for(0.2)  # the first line has started
        assert source.requests == ["Welcome to the show"]
        await show.push(comment("c1", "Li Wei", "What is the annual fee"))
        await fake.run_for(6.0)
        assert source.requests == [
            "Welcome to the show",
            "Li Wei asks: What is the annual fee?",
            "What is the annual fee",  # the echo answerer says it back
            "Here is our new card",
            "Thank you for watching",
        ]
        assert not any(e.interrupted for e in session.transcript)
        assert show.script_state == "finished"
        assert show.history[0]["status"] == "answered" and show.history[0]["id"] == "c1"
    finally:
        await session.close()


async def test_interruption_pauses_and_resume_repeats_the_cut_line() -> None:
    fake, session, show, source = make_show()
    try:
        show.play(parse_script(SCRIPT))
        await fake.run_for(0.9)  # into the second line
        assert source.requests[-1] == "Here is our new card"
        session.interrupt()
        await fake.run_for(2.0)
        assert show.script_state == "paused" and show.pause_reason == "interrupted"
        assert source.requests == ["Welcome to the show", "Here is our new card"]
        # Comments are still answered while the script is paused.
        await show.push(comment("c1", "Ann", "Hello"))
        await fake.run_for(2.0)
        assert source.requests[2:] == ["Ann asks: Hello?", "Hello"]
        assert show.resume_script()
        await fake.run_for(4.0)
        assert source.requests[4:] == ["Here is our new card", "Thank you for watching"]
        assert show.script_state == "finished"
    finally:
        await session.close()


async def test_takeover_pauses_script_and_brain_until_handback() -> None:
    fake, session, show, source = make_show()
    try:
        show.play(parse_script(SCRIPT))
        await fake.run_for(0.2)
        ai_driver = session.driver
        session.driver = OperatorDriver("alice", ai_driver, desk=None)  # type: ignore[arg-type]  # the desk's switch
        session.interrupt()  # the desk cuts the current line (takeover_cut)
        await show.push(comment("c1", "Bo", "Is the branch open"))
        await fake.run_for(2.0)
        assert show.script_state == "paused" and show.pause_reason == "takeover"
        assert source.requests == ["Welcome to the show"]  # nothing said under the operator
        # The operator answers a comment by hand: that still goes on air.
        assert await show.answer_by_hand("c1", "Yes until five", "alice") is not None
        await fake.run_for(2.0)
        assert source.requests[1:] == ["Bo asks: Is the branch open?", "Yes until five"]
        assert show.history[0]["status"] == "answered" and show.history[0]["by"] == "alice"
        assert [e.speaker for e in session.transcript[-2:]] == ["alice", "alice"]
        session.driver = ai_driver  # handback
        await fake.run_for(4.0)
        assert source.requests[3:] == ["Welcome to the show", "Here is our new card", "Thank you for watching"]
        assert show.script_state == "finished"
    finally:
        await session.close()


async def test_stop_script_lets_the_line_finish() -> None:
    fake, session, show, source = make_show()
    try:
        show.play(parse_script(SCRIPT))
        await fake.run_for(0.2)
        assert show.stop_script()
        await fake.run_for(3.0)
        assert source.requests == ["Welcome to the show"]
        assert not session.transcript[-1].interrupted
        assert show.script_state == "stopped" and not show.stop_script()
    finally:
        await session.close()


async def test_expression_and_gesture_held_while_the_line_plays() -> None:
    fake, session, show, _ = make_show()
    try:
        show.play(parse_script(SCRIPT))
        await fake.run_for(0.3)
        override = session.stage.face_override
        assert isinstance(override, ExpressionFace)
        t = session.stage.clock.time()
        state = override.state_at(t)
        assert state.smile == pytest.approx(0.85)
        assert state.head_pitch != 0.0  # nodding
        assert override.state_at(t + 5.0).head_pitch == 0.0  # the gesture is over after a second
        await fake.run_for(0.6)  # the second line has no expression
        assert session.stage.face_override is None
    finally:
        await session.close()


class SlowAnswerer:
    """Answers only when the test lets it (``release``), so a takeover can land while it thinks."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def answer(self, comment: Comment) -> tuple[str, str] | None:
        await self.release.wait()
        return "An answer", "en"


async def test_takeover_while_the_brain_thinks_keeps_the_comment_for_the_operator() -> None:
    fake, session, show, source = make_show()
    answerer = SlowAnswerer()
    show.answerer = answerer
    try:
        await show.push(comment("c1", "Li", "A question"))
        await fake.run_for(0.5)
        assert show.on_air is not None and show.on_air["comment"]["id"] == "c1"
        ai_driver = session.driver
        session.driver = OperatorDriver("alice", ai_driver, desk=None)  # type: ignore[arg-type]
        answerer.release.set()
        await fake.run_for(1.0)
        assert source.requests == []  # nothing said under the operator
        assert [c.id for c in await show.waiting()] == ["c1"]  # back at the front of the queue
        session.driver = ai_driver
        await fake.run_for(2.0)
        assert source.requests == ["Li asks: A question?", "An answer"]
    finally:
        await session.close()


async def test_brain_answerer_uses_a_fresh_context_per_comment() -> None:
    from types import SimpleNamespace

    from avatar.broadcast.comments import BrainAnswerer

    contexts: list[object] = []

    class Brain:
        async def areply(self, context: object, text: str) -> Any:
            contexts.append(context)
            return SimpleNamespace(text=f"About {text}", lang="en", action="answer")

    answerer = BrainAnswerer(SimpleNamespace(brain=Brain(), brain_loading=None))
    assert await answerer.answer(comment("c1", "a", "fees")) == ("About fees", "en")
    assert await answerer.answer(comment("c2", "b", "cards")) == ("About cards", "en")
    assert len(contexts) == 2 and contexts[0] is not contexts[1]
    none_loaded = BrainAnswerer(SimpleNamespace(brain=None, brain_loading=None))
    assert await none_loaded.answer(comment("c3", "c", "x")) is None


class AwayQueue(MemoryCommentQueue):
    """A shared queue whose store is away until ``back`` is set (as Redis fails: every call raises)."""

    def __init__(self) -> None:
        super().__init__()
        self.back = False
        self.failed_pops = 0

    async def pop(self) -> Comment | None:
        if not self.back:
            self.failed_pops += 1
            raise QueueUnavailable("Redis is unreachable")
        return await super().pop()


async def test_the_show_goes_on_while_the_comment_queue_is_away() -> None:
    fake, session, show, source = make_show()
    queue = AwayQueue()
    show.queue = queue
    try:
        show.play(parse_script(SCRIPT))
        await fake.run_for(6.0)
        assert queue.failed_pops > 0  # it kept asking
        assert source.requests == ["Welcome to the show", "Here is our new card", "Thank you for watching"]
        queue.back = True
        await show.push(comment("c1", "Ann", "Are you back"))
        await fake.run_for(2.0)
        assert source.requests[3:] == ["Ann asks: Are you back?", "Are you back"]
    finally:
        await session.close()
