"""Operator sign-in tokens shared by every process through Redis.

Keys: ``token:<sha256>`` -> ``{"operator", "expires"}`` (expiring with the token) and
``operator-tokens:<name>`` (a set of that operator's token keys, for revoking them all).

Every process keeps a mirror of the grants it has seen, so ``resolve`` stays a dictionary
lookup on the request path (the operator routes call it synchronously). Changes reach the
other processes' mirrors on the ``tokens`` topic; a token issued elsewhere that has not
arrived yet is fetched by ``prefetch`` (the cluster middleware calls it before a request is
handled), and ``drain`` (called before a response is sent) makes sure what a request wrote is
in Redis before the client can use it on another process. After Redis restarts empty, every
process writes back the grants it mirrors, so nobody is signed out by the restart.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import redis as sync_redis
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from avatar.cluster.redis_cluster import RedisCluster
from avatar.config import Settings
from avatar.operator.tokens import Clock, Grant, SqliteTokenBook, TokenBook, token_key

log = logging.getLogger(__name__)

TOPIC = "tokens"
PREFETCH_TIMEOUT = 0.5  # seconds a request waits for Redis to look up a token it has not seen


class RedisTokenBook(TokenBook):
    def __init__(self, cluster: RedisCluster, ttl: float, clock: Clock = time.time) -> None:
        super().__init__(ttl, clock)
        self.cluster = cluster
        #: Writes made through this book so far (the middleware drains only after a request that wrote).
        self.writes = 0
        cluster.subscribe(TOPIC, self._on_message)
        cluster.on_reset.append(self._restore)
        cluster.on_reconnect.append(self.reload)

    def _token(self, key: str) -> str:
        return self.cluster.key(f"token:{key}")

    def _set(self, operator: str) -> str:
        return self.cluster.key(f"operator-tokens:{operator}")

    # -- storage: the mirror, written through to Redis ------------------------------------------
    def _put(self, key: str, grant: Grant) -> None:
        super()._put(key, grant)
        self.writes += 1
        self.cluster.enqueue(lambda r: self._write(r, key, grant))
        self.cluster.publish(TOPIC, {"put": key, "operator": grant.operator, "expires": grant.expires})

    async def _write(self, r: aioredis.Redis, key: str, grant: Grant) -> None:
        ms = int((grant.expires - self.clock()) * 1000)
        if ms <= 0:
            return
        pipe = r.pipeline()
        pipe.set(self._token(key), json.dumps({"operator": grant.operator, "expires": grant.expires}), px=ms)
        pipe.sadd(self._set(grant.operator), key)
        pipe.pexpire(self._set(grant.operator), int(self.ttl * 1000))
        await pipe.execute()

    def _delete(self, key: str) -> Grant | None:
        grant = super()._delete(key)
        self.writes += 1
        token = self._token(key)

        async def write(r: aioredis.Redis) -> None:
            await r.delete(token)

        self.cluster.enqueue(write)
        self.cluster.publish(TOPIC, {"delete": key})
        return grant

    def _delete_operator(self, operator: str) -> int:
        count = super()._delete_operator(operator)
        self.writes += 1
        tokens_of = self._set(operator)

        async def write(r: aioredis.Redis) -> None:
            keys = await r.smembers(tokens_of)
            await r.delete(tokens_of, *(self._token(str(k)) for k in keys))

        self.cluster.enqueue(write)
        self.cluster.publish(TOPIC, {"delete_operator": operator})
        return count

    # -- keeping the mirror current ------------------------------------------------------------
    def _on_message(self, message: dict[str, Any]) -> None:
        if isinstance(message.get("put"), str) and isinstance(message.get("operator"), str):
            super()._put(message["put"], Grant(message["operator"], float(message.get("expires", 0))))
        elif isinstance(message.get("delete"), str):
            super()._delete(message["delete"])
        elif isinstance(message.get("delete_operator"), str):
            super()._delete_operator(message["delete_operator"])

    async def prefetch(self, token: str) -> None:
        """Learn ``token`` from Redis when the mirror does not know it (issued elsewhere just now)."""
        key = token_key(token)
        if super()._get(key) is not None:
            return
        try:
            raw = await asyncio.wait_for(self.cluster.redis.get(self._token(key)), PREFETCH_TIMEOUT)
        except (RedisError, OSError, TimeoutError):
            return  # Redis is away: the mirror is all there is
        if raw is not None:
            data = json.loads(raw)
            super()._put(key, Grant(str(data["operator"]), float(data["expires"])))

    async def drain(self) -> None:
        await self.cluster.drain()

    async def reload(self) -> None:
        """Replace the mirror with what Redis holds (revocations made while we were away)."""
        grants: dict[str, Grant] = {}
        prefix = self._token("")
        async for name in self.cluster.redis.scan_iter(match=prefix + "*", count=500):
            raw = await self.cluster.redis.get(name)
            if raw is not None:
                data = json.loads(raw)
                grants[str(name)[len(prefix):]] = Grant(str(data["operator"]), float(data["expires"]))
        self._grants = grants

    async def _restore(self) -> None:
        """Redis restarted empty: write back the grants this process knows."""
        self._forget_expired(self.clock())
        for key, grant in list(self._grants.items()):
            await self._write(self.cluster.redis, key, grant)


def revoke_operator_everywhere(settings: Settings, operator: str) -> int:
    """Revoke every sign-in of ``operator`` (``avatar operator remove``): in the data directory's
    token file and, in cluster mode, in Redis, telling every running process. Returns how many
    tokens were revoked. Raises ``redis.exceptions.RedisError`` when Redis cannot be reached."""
    book = SqliteTokenBook.in_data_dir(settings.data_dir, settings.operator_token_ttl)
    try:
        count = book.revoke_operator(operator)
    finally:
        book.close()
    if settings.redis_url:
        prefix = "avatar:"
        client = sync_redis.Redis.from_url(settings.redis_url, decode_responses=True, socket_connect_timeout=2.0)
        try:
            tokens_of = f"{prefix}operator-tokens:{operator}"
            keys = client.smembers(tokens_of)
            client.delete(tokens_of, *(f"{prefix}token:{k!s}" for k in keys))
            message = {"from": "cli", "topic": TOPIC, "message": {"delete_operator": operator}}
            client.publish(f"{prefix}events", json.dumps(message))
            count += len(keys)
        finally:
            client.close()
    return count
