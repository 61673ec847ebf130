"""What one server process shares with the others, behind one interface.

A ``Cluster`` is this process's view of the processes that serve together: a registry of
live sessions (which process owns each one: its media never leaves that process), takeover
locks, and topics that carry messages to every other process (operator events, token
revocations). ``LocalCluster`` is a single process on its own (everything stays in memory,
today's behaviour); ``avatar.cluster.redis_cluster.RedisCluster`` shares it all through Redis.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

#: A topic's subscriber: called on the event loop with a message another process published.
Listener = Callable[[dict[str, Any]], None]


class ClusterUnavailable(Exception):
    """The shared store cannot be reached now (the caller answers 503 or carries on locally)."""


@dataclass(frozen=True)
class Node:
    """One server process: its id and the base URL its peers forward requests to."""

    id: str
    url: str


class Cluster(Protocol):
    node: Node
    secret: str  # proves that a forwarded request comes from a peer

    async def start(self) -> None:
        """Connect; raises ``ClusterUnavailable`` with a message saying what failed."""

    async def close(self) -> None:
        """Withdraw this process (its sessions and presence) and disconnect."""

    # -- topics ---------------------------------------------------------------------------------
    def publish(self, topic: str, message: dict[str, Any]) -> None:
        """Send ``message`` to ``topic``'s subscribers on every other process. Never blocks; in
        order; a message published while the store is unreachable is lost (logged)."""

    def subscribe(self, topic: str, listener: Listener) -> None:
        """Call ``listener`` with each message other processes publish on ``topic``."""

    # -- the session registry -----------------------------------------------------------------------
    def track(self, session_id: str, summary: dict[str, Any]) -> None:
        """Record (or refresh) a live session of this process and what the operators' list
        shows of it. Never blocks; applied in order with ``publish``."""

    def untrack(self, session_id: str) -> None:
        """The session ended: remove it from the registry and drop its takeover lock."""

    async def owner(self, session_id: str) -> Node | None:
        """The live process that owns ``session_id``, or None."""

    async def lookup(self, session_id: str) -> tuple[Node, dict[str, Any]] | None:
        """The live process that owns ``session_id`` and its registry summary (with ``mode``:
        "call", "mirror" or "broadcast"), or None."""

    async def sessions(self) -> list[dict[str, Any]]:
        """The summaries of every live session of every other process."""

    async def peers(self) -> list[Node]:
        """Every other live process."""

    async def home(self, session_id: str) -> str | None:
        """The base URL of the process whose store holds ``session_id``'s transcript (live or
        ended), when known."""

    # -- takeover locks -----------------------------------------------------------------------------
    async def lock(self, session_id: str, operator: str) -> str:
        """Take the session's takeover lock for ``operator`` unless someone else holds it;
        returns the holder afterwards (``operator`` when it was granted or already theirs)."""

    async def unlock(self, session_id: str, operator: str) -> None:
        """Release the lock when ``operator`` holds it."""

    async def holder(self, session_id: str) -> str | None:
        """Who holds the session's takeover lock, or None."""


class LocalCluster:
    """One process on its own: the registry and locks are dictionaries, topics go nowhere."""

    def __init__(self, node: Node, secret: str = "") -> None:
        self.node = node
        self.secret = secret
        self._sessions: dict[str, dict[str, Any]] = {}
        self._locks: dict[str, str] = {}

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._sessions.clear()
        self._locks.clear()

    def publish(self, topic: str, message: dict[str, Any]) -> None:
        return None  # no other process to tell

    def subscribe(self, topic: str, listener: Listener) -> None:
        return None

    def track(self, session_id: str, summary: dict[str, Any]) -> None:
        self._sessions[session_id] = summary

    def untrack(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)
        self._locks.pop(session_id, None)

    async def owner(self, session_id: str) -> Node | None:
        return self.node if session_id in self._sessions else None

    async def lookup(self, session_id: str) -> tuple[Node, dict[str, Any]] | None:
        summary = self._sessions.get(session_id)
        return None if summary is None else (self.node, summary)

    async def sessions(self) -> list[dict[str, Any]]:
        return []  # there are no other processes

    async def peers(self) -> list[Node]:
        return []

    async def home(self, session_id: str) -> str | None:
        return None  # the transcript is here or nowhere

    async def lock(self, session_id: str, operator: str) -> str:
        return self._locks.setdefault(session_id, operator)

    async def unlock(self, session_id: str, operator: str) -> None:
        if self._locks.get(session_id) == operator:
            del self._locks[session_id]

    async def holder(self, session_id: str) -> str | None:
        return self._locks.get(session_id)
