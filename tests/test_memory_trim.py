"""The memory trimmer: one trim for a burst of closed sessions, spaced by its interval, in a
worker thread; nothing at all where the C library has no malloc_trim."""

from __future__ import annotations

import asyncio

from avatar.server.memory import MemoryTrimmer


async def test_a_burst_of_schedules_trims_once() -> None:
    trimmer = MemoryTrimmer(min_interval=0.0)
    assert trimmer.available  # glibc on every machine this project supports
    for _ in range(5):
        trimmer.schedule()
    await asyncio.sleep(0)  # let the task start
    assert trimmer._pending is not None
    await trimmer._pending
    assert trimmer.trims == 1


async def test_trims_are_spaced_by_the_interval() -> None:
    now = [100.0]
    trimmer = MemoryTrimmer(min_interval=5.0, clock=lambda: now[0])
    trimmer.schedule()
    assert trimmer._pending is not None
    await trimmer._pending
    assert trimmer.trims == 1
    trimmer.schedule()  # too soon: waits for the interval, so closing a task cancels it
    await asyncio.sleep(0)
    assert trimmer.trims == 1
    await trimmer.aclose()
    assert trimmer.trims == 1 and trimmer._pending is not None and trimmer._pending.cancelled()


async def test_without_malloc_trim_nothing_happens() -> None:
    trimmer = MemoryTrimmer()
    trimmer._trim = None
    trimmer.schedule()
    assert trimmer._pending is None and not trimmer.available
