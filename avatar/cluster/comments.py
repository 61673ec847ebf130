"""Broadcast stages' comment queues and moderation state in Redis, shared by every process.

A comment posted on any process is moderated and queued there, in Redis; the owner's
``StageShow`` pops it from the same queue (the ``comments`` topic wakes it at once). Keys,
under the cluster's prefix, per stage:

- ``stage:<id>:queue`` (list of comment ids, oldest first) and ``stage:<id>:comments`` (hash:
  id -> the comment's JSON); capped at ``QUEUE_LIMIT``, changed only by Lua scripts so a push,
  pop or remove is atomic; deleted when the stage ends, else they expire ``QUEUE_TTL`` after the
  last push (a process that died with its stage).
- ``stage:<id>:ids``: ``INCR`` counter, so comment ids (``c1``, ``c2``...) are unique per stage
  across processes.
- ``stage:<id>:rate:<user>``: sorted set of the user's attempt times (the rate limit), expiring
  ``per`` seconds after the last; ``stage:<id>:text:<sha1 of the text's fingerprint>``: sorted
  set user -> time (the repeat rule), expiring ``repeat_window`` after the last.

Times are the wall clock of the process that moderates (processes on several machines need
their clocks in step, as NTP keeps them). Every Redis failure is ``QueueUnavailable``.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from typing import Any

from redis.exceptions import RedisError

from avatar.broadcast.comments import QUEUE_LIMIT, Comment, CommentQueue, QueueUnavailable
from avatar.broadcast.moderation import Moderator
from avatar.cluster.base import ClusterUnavailable
from avatar.cluster.redis_cluster import RedisCluster

TOPIC = "comments"  # {"stage_id"}: a comment was queued for the owner's stage
QUEUE_TTL = 24 * 3600.0

_PUSH = """
if redis.call('LLEN', KEYS[1]) >= tonumber(ARGV[3]) then return false end
local n = redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return n
"""
_POP = """
local id = redis.call('LPOP', KEYS[1])
if not id then return false end
local c = redis.call('HGET', KEYS[2], id)
redis.call('HDEL', KEYS[2], id)
return c
"""
_REMOVE = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return false end
local c = redis.call('HGET', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return c
"""
_LIST = """
local ids = redis.call('LRANGE', KEYS[1], 0, -1)
if #ids == 0 then return {} end
return redis.call('HMGET', KEYS[2], unpack(ids))
"""
# The rate limit (moderation.MemoryModerationState.attempt, over a sorted set of attempt times).
_ATTEMPT = """
local now, per, rate = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - per)
local n = redis.call('ZCARD', KEYS[1])
redis.call('ZADD', KEYS[1], now, ARGV[4])
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(rate * 4) - 1)
redis.call('PEXPIRE', KEYS[1], math.ceil(per * 1000))
if n < rate then return false end
local oldest = redis.call('ZRANGE', KEYS[1], -(rate + 1), -(rate + 1), 'WITHSCORES')
return tostring(tonumber(oldest[2]) + per - now)
"""
# The repeat rule (moderation.MemoryModerationState.repeat, over a sorted set user -> time).
_REPEAT = """
local now, window, crowd = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local verdict = false
if redis.call('ZSCORE', KEYS[1], ARGV[4]) then
  verdict = 'same user'
elseif redis.call('ZCARD', KEYS[1]) + 1 >= crowd then
  verdict = 'many users'
end
redis.call('ZADD', KEYS[1], now, ARGV[4])
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(crowd * 4) - 1)
redis.call('PEXPIRE', KEYS[1], math.ceil(window * 1000))
return verdict
"""


def _unavailable(exc: Exception) -> QueueUnavailable:
    return QueueUnavailable(f"Redis is unreachable: {exc}")


def _decode(raw: Any) -> Comment | None:
    if raw is None:
        return None
    try:
        return Comment.from_dict(json.loads(raw))
    except (TypeError, ValueError, KeyError):
        return None  # not ours: ignored


class RedisCommentQueue:
    """One stage's ``CommentQueue`` in Redis."""

    def __init__(self, cluster: RedisCluster, stage_id: str, limit: int = QUEUE_LIMIT, ttl: float = QUEUE_TTL) -> None:
        self.cluster = cluster
        self.stage_id = stage_id
        self.limit = limit
        self.ttl = ttl
        self._queue = cluster.key(f"stage:{stage_id}:queue")
        self._comments = cluster.key(f"stage:{stage_id}:comments")
        self._ids = cluster.key(f"stage:{stage_id}:ids")

    async def _eval(self, script: str, *args: Any) -> Any:
        try:
            return await self.cluster.redis.eval(script, 2, self._queue, self._comments, *args)
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc

    async def next_id(self) -> str:
        try:
            pipe = self.cluster.redis.pipeline()
            pipe.incr(self._ids)
            pipe.pexpire(self._ids, int(self.ttl * 1000))
            number, _ = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc
        return f"c{number}"

    async def push(self, comment: Comment) -> int | None:
        payload = json.dumps(comment.to_dict(), ensure_ascii=False)
        position = await self._eval(_PUSH, comment.id, payload, self.limit, int(self.ttl * 1000))
        return None if position is None else int(position)

    async def pop(self) -> Comment | None:
        return _decode(await self._eval(_POP))

    async def list(self) -> list[Comment]:
        return [c for c in map(_decode, await self._eval(_LIST) or []) if c is not None]

    async def remove(self, comment_id: str) -> Comment | None:
        return _decode(await self._eval(_REMOVE, comment_id))

    async def clear(self) -> None:
        try:
            await self.cluster.redis.delete(self._queue, self._comments, self._ids)
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc


class RedisModerationState:
    """One stage's ``ModerationState`` in Redis: the rate limit and the repeat rule hold across
    every process that takes the stage's comments."""

    def __init__(self, cluster: RedisCluster, stage_id: str) -> None:
        self.cluster = cluster
        self.stage_id = stage_id

    def _key(self, kind: str, name: str) -> str:
        return self.cluster.key(f"stage:{self.stage_id}:{kind}:{name}")

    async def attempt(self, user: str, now: float, rate: int, per: float) -> float | None:
        member = f"{now!r}:{secrets.token_hex(4)}"  # every attempt counts, even two at one instant
        try:
            wait = await self.cluster.redis.eval(_ATTEMPT, 1, self._key("rate", user), repr(now), repr(per), rate,
                                                 member)
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc
        return None if wait is None else max(0.0, float(wait))

    async def repeat(self, user: str, fingerprint: str, now: float, window: float, crowd: int) -> str | None:
        digest = hashlib.sha1(fingerprint.encode()).hexdigest()
        try:
            verdict = await self.cluster.redis.eval(_REPEAT, 1, self._key("text", digest), repr(now), repr(window),
                                                    crowd, user)
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc
        return None if verdict is None else str(verdict)


class RedisCommentStore:
    """The ``CommentStore`` of processes serving together (installed by ``avatar.cluster.app``)."""

    def __init__(self, cluster: RedisCluster, clock: Any = time.time) -> None:
        self.cluster = cluster
        self.clock = clock

    def queue(self, stage_id: str) -> CommentQueue:
        return RedisCommentQueue(self.cluster, stage_id)

    def moderator(self, stage_id: str) -> Moderator:
        return Moderator(clock=self.clock, state=RedisModerationState(self.cluster, stage_id))

    async def remote_stage(self, stage_id: str) -> bool:
        try:
            found = await self.cluster.lookup(stage_id)
        except ClusterUnavailable as exc:
            raise QueueUnavailable(str(exc)) from exc
        return found is not None and found[0].id != self.cluster.node.id and found[1].get("mode") == "broadcast"

    def queued(self, stage_id: str) -> None:
        self.cluster.publish(TOPIC, {"stage_id": stage_id})
