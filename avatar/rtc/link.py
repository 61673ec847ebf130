"""Whether the customer is still receiving the avatar: their receiver reports, watched.

A browser reports on what it receives (RTCP receiver reports) several times a second for the
avatar's video (Chrome: about every 0.2 s; every 5 s for audio), and aiortc records when the
last report for each of our senders came (``RTCRemoteInboundRtpStreamStats.timestamp``, the
public ``getStats()``). When the customer's network dies, the reports stop, but ICE notices
only after its consent checks have failed for about 30 s, and meanwhile the avatar would
talk into the void while the audit trail recorded every word as said.

``watch_link`` polls those timestamps and tells the session when the customer was last heard
from (``Session.customer_heard``; the listener adds their microphone's audio), and the session
decides the link is lost after ``Session.link_timeout`` of nothing (``Session.check_link``):
3 s, or ``GAPS`` times the customer's usual gap between reports if that is longer. Reports
count from the customer's second on: before it, their pace is not known.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from avatar.session import Session

POLL = 0.5  # seconds between looks at the senders' stats
#: The link is taken as lost after this many of the customer's usual gaps between reports (and
#: never sooner than ``Session.link_timeout``'s default): a peer that reports on audio only
#: (Chrome: every 5 s) is not given up on between two of its reports.
GAPS = 4.0


async def last_report(pc: Any) -> datetime.datetime | None:
    """When the latest receiver report for any of ``pc``'s senders arrived (aware, UTC), or
    ``None`` before the first."""
    latest: datetime.datetime | None = None
    for sender in pc.getSenders():
        if sender.track is None:
            continue
        with contextlib.suppress(Exception):  # a sender whose transport is closing has no stats
            for stats in (await sender.getStats()).values():
                if getattr(stats, "type", None) == "remote-inbound-rtp":
                    stamp = stats.timestamp
                    if latest is None or stamp > latest:
                        latest = stamp
    return latest


async def watch_link(
    session: Session,
    pc: Any,
    *,
    poll: float = POLL,
    utcnow: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC),
) -> None:
    """Until cancelled (the session owns the task): every ``poll`` seconds, hand the session the
    stage-clock time of the customer's latest receiver report and let it check its link."""
    clock = session.stage.clock
    floor = session.link_timeout
    seen: datetime.datetime | None = None
    gap: float | None = None  # the customer's usual time between reports (a running mean)
    while True:
        await asyncio.sleep(poll)
        stamp = await last_report(pc)
        now = clock.time()
        if stamp is not None and stamp != seen:
            if seen is not None:
                step = (stamp - seen).total_seconds()
                if session.link_lost_at is None:  # a step across an outage is not their pace
                    gap = step if gap is None else 0.8 * gap + 0.2 * step
                    session.link_timeout = max(floor, GAPS * gap)
                # Only once their pace is known (a second report): a peer reporting every 5 s
                # would otherwise be taken as gone 3 s after its first report.
                age = max(0.0, (utcnow() - stamp).total_seconds())
                session.customer_heard(now - age)
            seen = stamp
        session.check_link(now)
