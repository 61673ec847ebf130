"""Give freed memory back to the operating system after a session ends.

A session's video encoder, renderer caches and audio buffers are large native allocations. When
the session closes they are freed, but glibc keeps the freed pages in its per-thread arenas, so
a long-running server's resident memory creeps up with every session and never comes down
(``bench/bench_load.py`` measured +0.8 GiB over 120 sessions with nothing live). ``malloc_trim``
returns those pages. It walks the heaps, so it runs in a worker thread and at most once per
``MIN_INTERVAL`` seconds however many sessions end together. On a C library without it (musl,
macOS) this does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

#: Seconds between two trims: sessions ending in a burst share one.
MIN_INTERVAL = 5.0


def _load_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


class MemoryTrimmer:
    """``schedule()`` after something large was freed; the trim follows in a worker thread."""

    def __init__(self, min_interval: float = MIN_INTERVAL, clock: Callable[[], float] = time.monotonic) -> None:
        self._trim = _load_trim()
        self.min_interval = min_interval
        self.clock = clock
        self._last = -float("inf")
        self._pending: asyncio.Task[None] | None = None
        self.trims = 0

    @property
    def available(self) -> bool:
        return self._trim is not None

    def schedule(self) -> None:
        if self._trim is None or (self._pending is not None and not self._pending.done()):
            return
        self._pending = asyncio.get_running_loop().create_task(self._run(), name="malloc-trim")

    async def _run(self) -> None:
        wait = self._last + self.min_interval - self.clock()
        if wait > 0:
            await asyncio.sleep(wait)
        self._last = self.clock()
        trim = self._trim
        if trim is None:
            return
        try:
            await asyncio.to_thread(trim, 0)
            self.trims += 1
        except Exception:  # never let housekeeping hurt a session
            log.exception("malloc_trim failed")

    async def aclose(self) -> None:
        if self._pending is not None and not self._pending.done():
            self._pending.cancel()
            try:
                await self._pending
            except asyncio.CancelledError:
                pass
