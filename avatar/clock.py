"""The media clock: one per stage, read by every track of that stage.

Audio pts count samples at 48 kHz and video pts are at 90 kHz, both from this clock's
origin, so the browser (through RTCP sender reports) lines the two up. A track never
keeps its own ``time.time()`` anchor.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from fractions import Fraction

AUDIO_RATE = 48_000
VIDEO_CLOCK_RATE = 90_000
AUDIO_TIME_BASE = Fraction(1, AUDIO_RATE)
VIDEO_TIME_BASE = Fraction(1, VIDEO_CLOCK_RATE)


class MediaClock:
    """Seconds since this stage went on air, from a monotonic source.

    ``now`` and ``sleep`` are injectable so tests run on a fake clock instead of the wall.
    """

    def __init__(
        self,
        now: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._now = now
        self._sleep = sleep
        self._origin = now()

    def time(self) -> float:
        return self._now() - self._origin

    def sample(self) -> int:
        """The audio sample position (48 kHz) at the current time."""
        return int(self.time() * AUDIO_RATE)

    async def sleep_until(self, t: float) -> None:
        """Wait until clock time ``t`` (returns at once when ``t`` has passed)."""
        delay = t - self.time()
        if delay > 0:
            await self._sleep(delay)


class FakeClock:
    """A manual time source for tests.

    With ``auto=True`` a sleep simply advances time (one sleeper at a time). Otherwise
    sleepers wait until the test moves time forward with ``advance``/``run_for``, so several
    tasks (tracks, speakers) interleave as they would on a real clock.
    """

    def __init__(self, start: float = 1000.0, auto: bool = False) -> None:
        self.t = start
        self.auto = auto
        self._moved = asyncio.Event()

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        if self.auto:
            self.t += max(0.0, seconds)
            await asyncio.sleep(0)
            return
        target = self.t + seconds
        while self.t < target - 1e-9:
            self._moved.clear()
            await self._moved.wait()

    def advance(self, seconds: float) -> None:
        self.t += seconds
        self._moved.set()

    async def run_for(self, seconds: float, step: float = 0.005) -> None:
        """Move time forward in small steps, letting every waiting task run at each step."""
        end = self.t + seconds
        while self.t < end - 1e-9:
            self.advance(min(step, end - self.t))
            for _ in range(10):
                await asyncio.sleep(0)

    def media_clock(self) -> MediaClock:
        return MediaClock(now=self.now, sleep=self.sleep)
