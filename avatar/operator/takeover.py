"""The takeover desk: who controls each live session, and the driver switch that goes with it.

A session's ``Control`` moves ``ai -> waiting -> operator -> ai`` (an operator may also take
over straight from ``ai``, and an operator may release a ``waiting`` session back to ``ai``);
every other move is a ``TransitionError``. One operator holds a session at a time: a second
one gets ``HeldByOther`` (HTTP 409). Takeover is a driver switch on the live session; the
stage, voice and face stay as they are, so the customer cannot tell.

- takeover: the AI's current line is cut at once (``takeover_cut``) or at the end of the word
  it is saying; the session's driver becomes an ``OperatorDriver``, which sends the customer's
  words to the operators' panel (with the brain's suggested answers) instead of answering.
- handback: the AI driver instance that was set aside continues, with the whole conversation
  in its context: the customer's lines and the operator's lines of the held stretch are
  added to it as they happen (``note_turn``).
- waiting: when the brain asks for a human, operators get an alert and the customer hears
  the holding line (again every ``holding_repeat`` seconds while nobody has taken over and
  the avatar is quiet, and in answer to anything the customer says meanwhile).
- grace: when an operator's last panel socket closes, the sessions they hold go back to the
  AI after ``grace`` seconds unless they reconnect first.

Every utterance and every control change is written to the store as it happens and pushed
to the operators' hub.
"""

from __future__ import annotations

import asyncio
import copy
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from avatar.brain.compliance import redact
from avatar.operator.hub import OperatorHub
from avatar.store import Store, Utterance

if TYPE_CHECKING:
    from avatar.session import Driver, Session, TranscriptEntry
    from avatar.speaker import Line

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]


class Control(enum.Enum):
    AI = "ai"
    WAITING = "waiting"
    OPERATOR = "operator"


ALLOWED: dict[Control, frozenset[Control]] = {
    Control.AI: frozenset({Control.WAITING, Control.OPERATOR}),
    Control.WAITING: frozenset({Control.OPERATOR, Control.AI}),
    Control.OPERATOR: frozenset({Control.AI}),
}


class TakeoverError(Exception):
    """A takeover request that cannot be honoured; ``status`` is the HTTP status to answer."""

    status = 409


class TransitionError(TakeoverError):
    def __init__(self, current: Control, wanted: Control) -> None:
        super().__init__(f"the session is under {current.value} control and cannot move to {wanted.value}")


class HeldByOther(TakeoverError):
    def __init__(self, holder: str) -> None:
        super().__init__(f"the session is already held by operator {holder!r}")
        self.holder = holder


class NotHolder(TakeoverError):
    def __init__(self, operator: str) -> None:
        super().__init__(f"operator {operator!r} does not hold this session")


class UnknownSession(TakeoverError):
    status = 404

    def __init__(self, session_id: str) -> None:
        super().__init__(f"no live session {session_id!r}")


@dataclass
class Seat:
    """The desk's record of one live session."""

    session: Session
    ai_driver: Driver
    control: Control = Control.AI
    holder: str | None = None
    held_since: float | None = None
    waiting_since: float | None = None
    grace: asyncio.Task[None] | None = None
    holding: asyncio.Task[None] | None = None
    last_utterance: dict[str, Any] | None = None

    def move(self, to: Control) -> None:
        if to not in ALLOWED[self.control]:
            raise TransitionError(self.control, to)
        self.control = to


class OperatorDriver:
    """The driver while an operator holds a session: the customer's words are not answered
    but go to the operators' panel, with the brain's suggested answers when a brain runs."""

    name = "operator"

    def __init__(self, operator: str, ai_driver: Driver, desk: TakeoverDesk) -> None:
        self.operator = operator
        self.ai_driver = ai_driver
        self.desk = desk

    async def on_customer_text(self, session: Session, text: str) -> None:
        context = getattr(self.ai_driver, "context", None)
        engines = getattr(self.ai_driver, "engines", None)
        brain = getattr(engines, "brain", None)
        # The customer's turn goes into the AI's own dialogue context (as do the operator's lines,
        # see TakeoverDesk._on_utterance), so a handback continues the whole conversation.
        draft_context = copy.deepcopy(context)
        note_turn(self.ai_driver, "customer", text)
        if brain is None or draft_context is None:
            return
        # The brain drafts answers for the operator on a copy of the context: nothing is said,
        # and a draft that was never said must not become part of the conversation.
        reply = await asyncio.to_thread(brain.reply, draft_context, text)
        session.last_reply = reply.to_dict()
        self.desk.publish_session(session.id)


class HoldingDriver:
    """The driver while a session waits for a human: every customer line gets the holding
    line in answer (their words are shown to the operators), never silence."""

    name = "waiting"

    def __init__(self, holding_line: str, ai_driver: Driver | None = None) -> None:
        self.holding_line = holding_line
        self.ai_driver = ai_driver

    async def on_customer_text(self, session: Session, text: str) -> None:
        note_turn(self.ai_driver, "customer", text)
        if self.holding_line:
            session.say(self.holding_line)


class TakeoverDesk:
    def __init__(
        self,
        hub: OperatorHub,
        store: Store,
        *,
        cut: bool = True,
        grace: float = 30.0,
        holding_line: str = "",
        holding_repeat: float = 30.0,
        sleep: Sleep = asyncio.sleep,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.hub = hub
        self.store = store
        self.cut = cut
        self.grace = grace
        self.holding_line = holding_line
        self.holding_repeat = holding_repeat
        self.sleep = sleep
        self.wall_clock = wall_clock
        self.seats: dict[str, Seat] = {}
        #: Called with (session id, operator) when an operator lets go of a session (handback,
        #: logout, grace expired): their voice and camera stop driving it.
        self.on_release: list[Callable[[str, str], None]] = []
        #: Takes the cluster-wide takeover lock for (session id, operator) and returns who holds
        #: it then (avatar.cluster sets it when several processes serve together).
        self.lock: Callable[[str, str], Awaitable[str]] | None = None
        hub.on_presence.append(self._presence)

    # -- sessions coming and going ------------------------------------------------------------
    def attach(self, session: Session) -> None:
        """Start following a live session: record its utterances, watch for handoff requests."""
        seat = Seat(session=session, ai_driver=session.driver)
        self.seats[session.id] = seat
        session.recorders.append(self._on_utterance)
        session.handoff_listeners.append(self._on_handoff)
        session.link_listeners.append(self._on_link_lost)
        session.add_sink(lambda message: self._on_session_event(session.id, message))
        self.publish_session(session.id)

    def detach(self, session: Session) -> None:
        seat = self.seats.pop(session.id, None)
        if seat is None:
            return
        for task in (seat.grace, seat.holding):
            if task is not None:
                task.cancel()
        self.hub.publish({"type": "session_closed", "session_id": session.id})

    def seat(self, session_id: str) -> Seat:
        seat = self.seats.get(session_id)
        if seat is None:
            raise UnknownSession(session_id)
        return seat

    # -- control changes ------------------------------------------------------------------------
    async def takeover(self, session_id: str, operator: str) -> Seat:
        """``operator`` takes the session. Idempotent for the holder; ``HeldByOther`` for anyone
        else. Answers once the takeover event is committed to the store."""
        seat = self.seat(session_id)
        if seat.control is Control.OPERATOR:
            if seat.holder != operator:
                raise HeldByOther(seat.holder or "?")
            return seat
        if self.lock is not None:
            holder = await self.lock(session_id, operator)
            if holder != operator:
                raise HeldByOther(holder)
            seat = self.seat(session_id)  # the session may have ended meanwhile
            if seat.control is Control.OPERATOR:
                if seat.holder != operator:
                    raise HeldByOther(seat.holder or "?")
                return seat
        seat.move(Control.OPERATOR)
        session = seat.session
        previous_wait = seat.waiting_since
        self._stop_holding(seat)
        seat.holder = operator
        seat.held_since = self.wall_clock()
        seat.waiting_since = None
        session.driver = OperatorDriver(operator, seat.ai_driver, self)
        # Cut the AI at once, or let it finish the word it is saying (not the whole line).
        cut_line = session.interrupt() if self.cut else await session.finish_word()
        detail: dict[str, Any] = {"cut": cut_line.heard_text() if cut_line is not None else None}
        if previous_wait is not None:
            detail["waited"] = round(seat.held_since - previous_wait, 3)
        if not self.hub.online(operator):
            log.info("operator %s took session %s without a live panel", operator, session_id)
        await self._event("takeover", session_id, operator, detail)
        self.publish_session(session_id)
        return seat

    async def handback(self, session_id: str, operator: str, reason: str = "handback") -> Seat:
        """Give the session back to the AI. The holder may hand back; any operator may release a
        session that is still waiting (the AI carries on)."""
        seat = self.seat(session_id)
        if seat.control is Control.OPERATOR and seat.holder != operator:
            raise NotHolder(operator)
        seat.move(Control.AI)
        self._release(seat)
        await self._event("handback", session_id, operator, {"reason": reason})
        self.publish_session(session_id)
        return seat

    def require_holder(self, session_id: str, operator: str) -> Seat:
        seat = self.seat(session_id)
        if seat.control is not Control.OPERATOR or seat.holder != operator:
            if seat.holder is not None and seat.holder != operator:
                raise HeldByOther(seat.holder)
            raise NotHolder(operator)
        return seat

    def held_by(self, operator: str) -> list[str]:
        return [sid for sid, seat in self.seats.items() if seat.holder == operator]

    async def release_all(self, operator: str, reason: str) -> list[str]:
        """Hand every session ``operator`` holds back to the AI (logout, account removed)."""
        released = []
        for session_id in self.held_by(operator):
            await self.handback(session_id, operator, reason)
            released.append(session_id)
        return released

    def _release(self, seat: Seat) -> None:
        if seat.holder is not None:
            for listener in list(self.on_release):
                try:
                    listener(seat.session.id, seat.holder)
                except Exception:
                    log.exception("release listener failed for session %s", seat.session.id)
        if seat.grace is not None:
            seat.grace.cancel()
            seat.grace = None
        self._stop_holding(seat)
        seat.holder = None
        seat.held_since = None
        seat.waiting_since = None
        seat.session.handoff_reason = None
        seat.session.driver = seat.ai_driver

    def _on_link_lost(self, session: Session, dropped: list[Line], late: list[Line]) -> None:
        """The customer's connection is lost (``Session.lose_link``): the audit trail says so, and
        names the queued lines that were then not said (acknowledged, so not silently gone) and
        the lines recorded as said that ended after the customer's last sign of life."""
        lost_for = session.stage.clock.time() - (session.link_lost_at or 0.0)
        detail = {
            "silent_for": round(lost_for, 1),
            "not_said": [line.text for line in dropped],
            "perhaps_unheard": [line.text for line in late],
        }
        self._record_event("link_lost", session.id, None, detail)

    # -- waiting for a human ---------------------------------------------------------------------
    def _on_handoff(self, session: Session, reason: str) -> None:
        seat = self.seats.get(session.id)
        if seat is None or seat.control is not Control.AI:
            return  # already waiting, or an operator is on it
        seat.move(Control.WAITING)
        seat.waiting_since = self.wall_clock()
        session.driver = HoldingDriver(self.holding_line, seat.ai_driver)
        if self.holding_line:
            session.say(self.holding_line)
            seat.holding = session.spawn(self._hold(seat), "holding-line")
        self._record_event("handoff_request", session.id, None, {"reason": reason})
        self.hub.publish({"type": "alert", "session_id": session.id, "reason": reason, "avatar": session.avatar})
        self.publish_session(session.id)

    async def _hold(self, seat: Seat) -> None:
        """Repeat the holding line while nobody has taken over and the avatar is quiet."""
        while seat.control is Control.WAITING:
            await self.sleep(self.holding_repeat)
            quiet = not seat.session.speaker.busy and seat.session.link_lost_at is None  # someone to hear it
            if seat.control is Control.WAITING and quiet:
                seat.session.say(self.holding_line)

    def _stop_holding(self, seat: Seat) -> None:
        if seat.holding is not None:
            seat.holding.cancel()
            seat.holding = None

    # -- operator presence and the grace period -----------------------------------------------------
    def _presence(self, operator: str, online: bool) -> None:
        for session_id in self.held_by(operator):
            seat = self.seats[session_id]
            if online and seat.grace is not None:
                seat.grace.cancel()
                seat.grace = None
                log.info("operator %s is back: session %s stays with them", operator, session_id)
            elif not online and seat.grace is None:
                seat.grace = seat.session.spawn(self._grace(seat, operator), "operator-grace")
        self.hub.publish({"type": "presence", "operator": operator, "online": online})

    async def _grace(self, seat: Seat, operator: str) -> None:
        await self.sleep(self.grace)
        seat.grace = None  # this task is finishing: _release must not cancel it
        if seat.holder == operator and seat.control is Control.OPERATOR and not self.hub.online(operator):
            log.info("operator %s did not come back within %.0f s: session %s goes back to the AI",
                     operator, self.grace, seat.session.id)
            await self.handback(seat.session.id, operator, reason="grace_expired")

    # -- recording and publishing ----------------------------------------------------------------
    def _on_utterance(self, session: Session, entry: TranscriptEntry) -> None:
        seat = self.seats.get(session.id)
        started = entry.started if entry.started is not None else entry.at
        utterance = Utterance(
            session_id=session.id, speaker=entry.speaker, text=entry.text, started=started, ended=entry.at,
            interrupted=entry.interrupted, customer_id=session.customer_id,
        )
        future = self.store.add_utterance(utterance)
        future.add_done_callback(_log_failure)
        # Operators see what the store keeps: card, ID and phone numbers redacted.
        shown = redact(entry.text)
        message = {"type": "utterance", **utterance.to_dict(), "text": shown}
        message.pop("id", None)
        if seat is not None:
            seat.last_utterance = {"speaker": entry.speaker, "text": shown, "at": entry.at}
            if entry.speaker not in ("customer", "ai"):
                note_turn(seat.ai_driver, "assistant", entry.text)  # an operator's line
        self.hub.publish(message)
        self.publish_session(session.id)

    def _on_session_event(self, session_id: str, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "caption":
            self.hub.publish({**message, "text": redact(str(message.get("text", ""))), "session_id": session_id})
        elif kind == "transcript" and not message.get("final"):
            # Live (partial) words of a customer still speaking; finals arrive as utterances.
            self.hub.publish({**message, "text": redact(str(message.get("text", ""))), "session_id": session_id})
        elif kind == "state":
            self.publish_session(session_id)

    def publish_session(self, session_id: str) -> None:
        if session_id in self.seats:
            self.hub.publish({"type": "session", "session": self.summary(session_id)})

    def summary(self, session_id: str) -> dict[str, Any]:
        """What the panel shows for one session."""
        seat = self.seat(session_id)
        s = seat.session
        now = self.wall_clock()
        reply = s.last_reply or {}
        return {
            "session_id": s.id,
            "avatar": s.avatar,
            "control": seat.control.value,
            "holder": seat.holder,
            "speaking": s.state,
            "created": s.created,
            "customer_id": s.customer_id,
            "waiting_since": seat.waiting_since,
            "waited": round(now - seat.waiting_since, 1) if seat.waiting_since is not None else None,
            "handoff_reason": s.handoff_reason,
            "emotion": reply.get("emotion"),
            "topic": reply.get("topic"),
            "suggestions": list(reply.get("suggestions") or []),
            "last_utterance": seat.last_utterance,
            "grace": seat.grace is not None,
        }

    def summaries(self) -> list[dict[str, Any]]:
        """Every live session, most urgent first: waiting (longest wait first), then those held by
        operators, then the AI's (most upset customer first)."""
        rank = {Control.WAITING: 0, Control.OPERATOR: 1, Control.AI: 2}

        def urgency(item: dict[str, Any]) -> tuple[int, float]:
            control = Control(item["control"])
            if control is Control.WAITING:
                return (0, -(item["waited"] or 0.0))
            return (rank[control], -(item["emotion"] or 0.0))

        return sorted((self.summary(sid) for sid in self.seats), key=urgency)

    async def _event(self, kind: str, session_id: str | None, operator: str | None, detail: dict[str, Any]) -> None:
        await asyncio.wrap_future(self.store.add_event(kind, session_id, operator, detail))
        self.hub.publish({"type": "event", "kind": kind, "session_id": session_id, "operator": operator,
                          "detail": detail, "at": self.wall_clock()})

    def _record_event(self, kind: str, session_id: str | None, operator: str | None, detail: dict[str, Any]) -> None:
        self.store.add_event(kind, session_id, operator, detail).add_done_callback(_log_failure)
        self.hub.publish({"type": "event", "kind": kind, "session_id": session_id, "operator": operator,
                          "detail": detail, "at": self.wall_clock()})


def note_turn(driver: Driver | None, role: str, text: str) -> None:
    """Add a turn the AI did not take to the AI driver's dialogue context (drivers without one,
    such as the echo driver, keep none)."""
    note = getattr(driver, "note", None)
    if note is not None:
        note(role, text)


def _log_failure(future: Future[Any]) -> None:
    exc = future.exception()
    if exc is not None:
        log.error("could not store an audit record: %s", exc)
