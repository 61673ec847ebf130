"""The event hub: what the operators' WebSockets receive (session list changes, utterances,
captions, alerts, suggestions), pushed as it happens so no panel polls.

Each connected WebSocket is a ``Subscription`` with a bounded queue. A panel that cannot
keep up is not allowed to grow the server's memory: its queue overflows, the subscription is
marked ``overflowed`` and the socket closes; the panel reconnects and gets a fresh snapshot.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

QUEUE_LIMIT = 2000


class Subscription:
    def __init__(self, operator: str, limit: int = QUEUE_LIMIT) -> None:
        self.operator = operator
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=limit)
        self.overflowed = asyncio.Event()

    def push(self, message: dict[str, Any]) -> None:
        if self.overflowed.is_set():
            return
        try:
            self.queue.put_nowait(message)
        except asyncio.QueueFull:
            log.warning("operator %s: event queue full, closing the socket", self.operator)
            self.overflowed.set()

    async def next(self) -> dict[str, Any] | None:
        """The next message, or None once the subscription has overflowed."""
        if self.overflowed.is_set():
            return None
        get = asyncio.ensure_future(self.queue.get())
        lost = asyncio.ensure_future(self.overflowed.wait())
        try:
            done, _ = await asyncio.wait({get, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            get.cancel()
            lost.cancel()
        if get in done and not get.cancelled():
            return get.result()
        return None


class OperatorHub:
    """Fan-out of operator events. ``on_presence(operator, online)`` is called when an
    operator's first socket opens and when their last one closes (the takeover desk starts
    and cancels grace periods on it); in a cluster, their first and last anywhere (the cluster
    also calls the listeners when that happens on another process)."""

    def __init__(self) -> None:
        self._subs: set[Subscription] = set()
        self.on_presence: list[Callable[[str, bool], None]] = []
        #: Called with every published (message, operator): the cluster relays them to the
        #: operators connected to other server processes (avatar.cluster).
        self.relays: list[Callable[[dict[str, Any], str | None], None]] = []
        #: Whether an operator has a desk open on another server process (set by avatar.cluster),
        #: so presence and grace periods follow the operator, not one process's sockets.
        self.elsewhere: Callable[[str], bool] | None = None

    def subscribe(self, operator: str) -> Subscription:
        first = not self.online(operator)
        sub = Subscription(operator)
        self._subs.add(sub)
        if first:
            self._presence(operator, True)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub not in self._subs:
            return
        self._subs.discard(sub)
        if not self.online(sub.operator):
            self._presence(sub.operator, False)

    def online(self, operator: str) -> bool:
        """Whether ``operator`` has a desk open here or (in a cluster) on another process."""
        return self.online_here(operator) or (self.elsewhere is not None and self.elsewhere(operator))

    def online_here(self, operator: str) -> bool:
        return any(s.operator == operator for s in self._subs)

    def operators_online(self) -> list[str]:
        return sorted({s.operator for s in self._subs})

    def publish(self, message: dict[str, Any], operator: str | None = None) -> None:
        """Send ``message`` to every socket, or only to ``operator``'s (here and, through the
        relays, on every other server process)."""
        self.deliver(message, operator)
        for relay in list(self.relays):
            try:
                relay(message, operator)
            except Exception:
                log.exception("event relay failed")

    def deliver(self, message: dict[str, Any], operator: str | None = None) -> None:
        """Send ``message`` to this process's sockets only (a message relayed from another process)."""
        for sub in list(self._subs):
            if operator is None or sub.operator == operator:
                sub.push(message)

    def _presence(self, operator: str, online: bool) -> None:
        for listener in list(self.on_presence):
            try:
                listener(operator, online)
            except Exception:
                log.exception("presence listener failed for %s", operator)
