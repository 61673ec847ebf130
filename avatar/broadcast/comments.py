"""Live comments on a broadcast stage: the comment, the per-stage queue, and how one is answered.

The queue is behind the small asynchronous ``CommentQueue`` interface (push, pop, list,
remove) so that a shared store (Redis) can back it when stages live in several processes;
``MemoryCommentQueue`` is the in-process one. A ``CommentStore`` makes a stage's queue and its
moderation filter. Comments are answered on air one at a time by ``avatar.broadcast.script.
StageShow`` (which also plays show scripts), with the viewer's name spoken first:
"Li Wei asks: ..." / "小王问：...".
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from avatar.broadcast.moderation import Moderator
from avatar.speech.lang import detect_lang

MAX_USER_CHARS = 64
MAX_COMMENT_CHARS = 500
#: Comments waiting on one stage before new ones are refused (``queue_full``).
QUEUE_LIMIT = 200


@dataclass
class Comment:
    """One viewer's comment, accepted by moderation."""

    id: str
    user: str
    text: str
    lang: str
    at: float = field(default_factory=time.time)  # wall clock, epoch seconds

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "user": self.user, "text": self.text, "lang": self.lang, "at": self.at}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Comment:
        """The inverse of ``to_dict`` (``KeyError``/``TypeError``/``ValueError`` when malformed)."""
        return cls(id=str(data["id"]), user=str(data["user"]), text=str(data["text"]), lang=str(data["lang"]),
                   at=float(data["at"]))


class QueueUnavailable(Exception):
    """The shared store behind a ``CommentQueue`` cannot be reached now (the route answers 503)."""


class CommentQueue(Protocol):
    """The comments waiting on one stage, oldest first. Every method may raise
    ``QueueUnavailable`` when the queue lives in a shared store that is away."""

    async def next_id(self) -> str:
        """A new comment id, unique on this stage (``c1``, ``c2``...)."""
        ...

    async def push(self, comment: Comment) -> int | None:
        """Append ``comment``: its 1-based position in the queue, or None (and nothing stored)
        when the queue is full."""
        ...

    async def pop(self) -> Comment | None:
        """Take the oldest comment, or None when the queue is empty."""
        ...

    async def list(self) -> list[Comment]:
        """Every waiting comment, oldest first (a copy)."""
        ...

    async def remove(self, comment_id: str) -> Comment | None:
        """Take the comment with ``comment_id`` out of the queue, wherever it is; None if absent."""
        ...

    async def clear(self) -> None:
        """Forget every waiting comment (the stage ended)."""
        ...


class MemoryCommentQueue:
    """The in-process ``CommentQueue``: a bounded FIFO. Its ids come from ``ids`` (one counter
    per server process, so ids stay unique across its stages) or its own counter."""

    def __init__(self, limit: int = QUEUE_LIMIT, ids: CommentIds | None = None) -> None:
        self.limit = limit
        self.ids = ids or CommentIds()
        self._items: deque[Comment] = deque()

    async def next_id(self) -> str:
        return self.ids.next()

    async def push(self, comment: Comment) -> int | None:
        if len(self._items) >= self.limit:
            return None
        self._items.append(comment)
        return len(self._items)

    async def pop(self) -> Comment | None:
        return self._items.popleft() if self._items else None

    async def list(self) -> list[Comment]:
        return list(self._items)

    async def remove(self, comment_id: str) -> Comment | None:
        for comment in self._items:
            if comment.id == comment_id:
                self._items.remove(comment)
                return comment
        return None

    async def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


class CommentIds:
    """Short comment ids, unique within one server process (``c1``, ``c2``...)."""

    def __init__(self) -> None:
        self._next = itertools.count(1)

    def next(self) -> str:
        return f"c{next(self._next)}"


class CommentStore(Protocol):
    """Where a server keeps its stages' comment queues and moderation state: in its memory
    (``MemoryCommentStore``) or, when processes serve together, in Redis
    (``avatar.cluster.comments.RedisCommentStore``), so that a comment posted on any process is
    queued and moderated as if every process were one."""

    def queue(self, stage_id: str) -> CommentQueue:
        """The queue of ``stage_id`` (a new handle each call; the state lives in the store)."""
        ...

    def moderator(self, stage_id: str) -> Moderator:
        """The moderation filter of ``stage_id``."""
        ...

    async def remote_stage(self, stage_id: str) -> bool:
        """Whether ``stage_id`` is a live broadcast stage of another process (``QueueUnavailable``
        when that cannot be told now)."""
        ...

    def queued(self, stage_id: str) -> None:
        """Tell the process that owns ``stage_id`` that a comment was queued for it here."""
        ...


class MemoryCommentStore:
    """One process on its own: a ``MemoryCommentQueue`` and an in-memory ``Moderator`` per stage."""

    def __init__(self) -> None:
        self.ids = CommentIds()

    def queue(self, stage_id: str) -> CommentQueue:
        return MemoryCommentQueue(ids=self.ids)

    def moderator(self, stage_id: str) -> Moderator:
        return Moderator()

    async def remote_stage(self, stage_id: str) -> bool:
        return False  # there are no other processes

    def queued(self, stage_id: str) -> None:
        return None


def make_comment(comment_id: str, user: str, text: str) -> Comment:
    return Comment(id=comment_id, user=user.strip(), text=" ".join(text.split()), lang=detect_lang(text))


def question_line(comment: Comment) -> str:
    """What the avatar says before answering: the viewer's name and their question, in the
    comment's language."""
    text = comment.text.rstrip()
    if comment.lang == "zh":
        return f"{comment.user}问：{text}"
    if text[-1:] not in ".?!":
        text += "?"
    return f"{comment.user} asks: {text}"


class Answerer(Protocol):
    """Writes the on-air answer to a comment: (text, lang), or None when there is nothing to say."""

    async def answer(self, comment: Comment) -> tuple[str, str] | None: ...


class BrainAnswerer:
    """The dialogue brain answers each comment on its own: viewers are different people, so no
    dialogue context carries from one viewer's question to the next."""

    def __init__(self, engines: Any) -> None:
        self.engines = engines

    async def answer(self, comment: Comment) -> tuple[str, str] | None:
        import asyncio

        from avatar.brain import DialogueContext

        brain = self.engines.brain
        if brain is None:
            loading = self.engines.brain_loading
            if loading is None:
                return None
            brain = await asyncio.shield(loading)
        reply = await brain.areply(DialogueContext(), comment.text)
        if not reply.text:
            return None
        return reply.text, reply.lang or comment.lang


class EchoAnswerer:
    """Says the comment back (the ``echo`` driver's broadcast counterpart: the media path without
    a brain)."""

    async def answer(self, comment: Comment) -> tuple[str, str] | None:
        return comment.text, comment.lang


def answerer_for(settings: Any, engines: Any) -> Answerer:
    """The answerer the configuration asks for: the brain when ``driver = "brain"`` and one is
    loaded or loading, else echo."""
    if settings.driver == "brain" and (engines.brain is not None or engines.brain_loading is not None):
        return BrainAnswerer(engines)
    return EchoAnswerer()
