"""The operator sign-in limiter shared through Redis, so that trying passwords on several
processes gets no more attempts than on one.

The same rule as ``avatar.operator.tokens.LoginLimiter`` (which every process still applies
to itself): at most ``max_failures`` failed sign-ins per ``window`` seconds, counted per
operator name and per client address. Keys, under the cluster's prefix:
``login:name:<name, lower case>`` and ``login:addr:<address>``, sorted sets of failure times
(the wall clock) that expire ``window`` seconds after the last failure. A success clears the
name's count. The cluster middleware applies it around ``POST /api/operator/login``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

from redis.exceptions import RedisError

from avatar.cluster.base import ClusterUnavailable
from avatar.cluster.redis_cluster import RedisCluster


class SharedLoginLimiter:
    def __init__(
        self, cluster: RedisCluster, max_failures: int = 5, window: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cluster = cluster
        self.max_failures = max_failures
        self.window = window
        self.clock = clock

    def _keys(self, name: str, address: str) -> tuple[str, str]:
        return self.cluster.key(f"login:name:{name.lower()}"), self.cluster.key(f"login:addr:{address}")

    async def retry_after(self, name: str, address: str) -> float | None:
        """Seconds until another attempt is allowed, or None when it is allowed now."""
        now = self.clock()
        try:
            pipe = self.cluster.redis.pipeline()
            for key in self._keys(name, address):
                pipe.zremrangebyscore(key, "-inf", now - self.window)
                pipe.zcard(key)
                pipe.zrange(key, 0, 0, withscores=True)
            results = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise ClusterUnavailable(f"Redis is unreachable: {exc}") from exc
        wait = 0.0
        for count, oldest in (results[1:3], results[4:6]):
            if int(count) >= self.max_failures and oldest:
                wait = max(wait, float(oldest[0][1]) + self.window - now)
        return wait if wait > 0 else None

    async def failed(self, name: str, address: str) -> None:
        now = self.clock()
        ms = int(self.window * 1000)
        try:
            pipe = self.cluster.redis.pipeline()
            for key in self._keys(name, address):
                pipe.zadd(key, {f"{now!r}:{secrets.token_hex(4)}": now})
                pipe.zremrangebyscore(key, "-inf", now - self.window)
                pipe.zremrangebyrank(key, 0, -(self.max_failures * 4) - 1)  # a flood must not grow memory
                pipe.pexpire(key, ms)
            await pipe.execute()
        except (RedisError, OSError) as exc:
            raise ClusterUnavailable(f"Redis is unreachable: {exc}") from exc

    async def succeeded(self, name: str) -> None:
        try:
            await self.cluster.redis.delete(self._keys(name, "")[0])
        except (RedisError, OSError) as exc:
            raise ClusterUnavailable(f"Redis is unreachable: {exc}") from exc
