"""Live comments on a broadcast stage: the comment, the per-stage queue, and how one is answered.

The queue is behind the small ``CommentQueue`` interface (push, pop, list, remove) so that a
shared store (Redis) can back it when stages live in several processes; ``MemoryCommentQueue``
is the in-process one. Comments are answered on air one at a time by ``avatar.broadcast.script.
StageShow`` (which also plays show scripts), with the viewer's name spoken first:
"Li Wei asks: ..." / "小王问：...".
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

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


class CommentQueue(Protocol):
    """The comments waiting on one stage, oldest first."""

    def push(self, comment: Comment) -> bool:
        """Append ``comment``; False (and nothing stored) when the queue is full."""
        ...

    def pop(self) -> Comment | None:
        """Take the oldest comment, or None when the queue is empty."""
        ...

    def list(self) -> list[Comment]:
        """Every waiting comment, oldest first (a copy)."""
        ...

    def remove(self, comment_id: str) -> Comment | None:
        """Take the comment with ``comment_id`` out of the queue, wherever it is; None if absent."""
        ...


class MemoryCommentQueue:
    """The in-process ``CommentQueue``: a bounded FIFO."""

    def __init__(self, limit: int = QUEUE_LIMIT) -> None:
        self.limit = limit
        self._items: deque[Comment] = deque()

    def push(self, comment: Comment) -> bool:
        if len(self._items) >= self.limit:
            return False
        self._items.append(comment)
        return True

    def pop(self) -> Comment | None:
        return self._items.popleft() if self._items else None

    def list(self) -> list[Comment]:
        return list(self._items)

    def remove(self, comment_id: str) -> Comment | None:
        for comment in self._items:
            if comment.id == comment_id:
                self._items.remove(comment)
                return comment
        return None

    def __len__(self) -> int:
        return len(self._items)


class CommentIds:
    """Short comment ids, unique within one server process (``c1``, ``c2``...)."""

    def __init__(self) -> None:
        self._next = itertools.count(1)

    def next(self) -> str:
        return f"c{next(self._next)}"


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
