"""The cluster shared through Redis (redis-py's asyncio client).

Keys (all under ``prefix``, ``avatar:`` by default):

- ``nodes`` (hash): node id -> its base URL; ``alive:<node>``: set every ``heartbeat`` seconds,
  expires after three missed beats. A node whose ``alive`` key is gone is dead: its sessions
  are ignored (and removed by whoever notices).
- ``sessions`` (hash): session id -> ``{"node", "summary"}``, rewritten on every change and on
  every heartbeat, so a Redis that restarted empty is whole again within one beat.
- ``home:<session>``: the ``advertise_url`` of the process whose store holds the session's
  transcript, set when it starts, kept ``HOME_TTL`` (30 days) so the transcript of an ended
  session can be fetched through any process.
- ``lock:<session>``: the operator holding the session (``SET NX PX``, refreshed by the
  owner's heartbeat while held), so two operators on two processes cannot both hold it.
- ``secret``: the forwarding secret when ``cluster_secret`` is not configured (whoever can
  read Redis can already impersonate any process, so keeping it there adds no exposure).
- one pub/sub channel, ``events``, carrying ``{"from": node, "topic", "message"}``.

Writes from synchronous callers (``publish``, ``track``, ``untrack`` and the token book's)
go through one outbound queue drained by one task, so they reach Redis in the order they
were made. Losing Redis never stops the process: writes made meanwhile are dropped (logged
once per outage), the subscriber reconnects with back-off, and the heartbeat puts the
registry back. ``on_reset`` listeners run when Redis comes back without its data (another
``run_id``), ``on_reconnect`` ones when it comes back with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from avatar.cluster.base import ClusterUnavailable, Listener, Node

log = logging.getLogger(__name__)

Write = Callable[[aioredis.Redis], Awaitable[Any]]
OUTBOUND_LIMIT = 10_000
LOCK_TTL = 60.0  # seconds a takeover lock outlives its owner's last heartbeat
HOME_TTL = 30 * 24 * 3600.0  # seconds Redis remembers which process stores a session's transcript

_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def describe_url(url: str) -> str:
    """The URL without a password, for messages and logs."""
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.rpartition('@')[2]}"
    return url


class RedisCluster:
    def __init__(
        self,
        url: str,
        node: Node,
        *,
        secret: str | None = None,
        prefix: str = "avatar:",
        heartbeat: float = 5.0,
        local_sessions: Callable[[], dict[str, dict[str, Any]]] | None = None,
        held_locks: Callable[[], dict[str, str]] | None = None,
    ) -> None:
        self.url = url
        self.node = node
        self.secret = secret or ""
        self._configured_secret = secret
        self.prefix = prefix
        self.heartbeat = heartbeat
        #: This process's live sessions and their summaries, re-published on every beat.
        self.local_sessions = local_sessions or dict
        #: session id -> operator for the sessions of this process an operator holds.
        self.held_locks = held_locks or dict
        self.on_reset: list[Callable[[], Awaitable[None]]] = []
        self.on_reconnect: list[Callable[[], Awaitable[None]]] = []
        # A pooled connection that Redis closed (a restart) is retried on a fresh one at once.
        self.redis: aioredis.Redis = aioredis.Redis.from_url(
            url, decode_responses=True, socket_connect_timeout=2.0, socket_timeout=5.0, health_check_interval=10,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
        )
        self._listeners: dict[str, list[Listener]] = {}
        self._outbound: asyncio.Queue[Write] = asyncio.Queue(maxsize=OUTBOUND_LIMIT)
        self._tasks: list[asyncio.Task[None]] = []
        self._tracked: set[str] = set()
        self._run_id: str | None = None
        self._write_failing = False
        self._idle = asyncio.Event()
        self._idle.set()

    def key(self, name: str) -> str:
        return self.prefix + name

    # -- life --------------------------------------------------------------------------------
    async def start(self) -> None:
        try:
            await self.redis.ping()
            self._run_id = await self._server_run_id()
            if self._configured_secret is None:
                await self.redis.set(self.key("secret"), secrets.token_urlsafe(32), nx=True)
                self.secret = str(await self.redis.get(self.key("secret")))
            await self._beat()
        except (RedisError, OSError) as exc:
            await self.redis.aclose()
            raise ClusterUnavailable(f"cannot reach Redis at {describe_url(self.url)}: {exc}") from exc
        pubsub_ready = asyncio.Event()
        self._tasks = [
            asyncio.create_task(self._drain(), name="cluster-writes"),
            asyncio.create_task(self._subscriber(pubsub_ready), name="cluster-events"),
            asyncio.create_task(self._heartbeat(), name="cluster-heartbeat"),
        ]
        # Events published by others from now on reach us: wait until the channel is subscribed.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(pubsub_ready.wait(), 5.0)
        log.info("cluster: node %s (%s) joined through Redis at %s", self.node.id, self.node.url,
                 describe_url(self.url))

    async def close(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.drain(), 2.0)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        with contextlib.suppress(RedisError, OSError):
            pipe = self.redis.pipeline()
            if self._tracked:
                pipe.hdel(self.key("sessions"), *self._tracked)
            pipe.hdel(self.key("nodes"), self.node.id)
            pipe.delete(self.key(f"alive:{self.node.id}"))
            await asyncio.wait_for(pipe.execute(), 2.0)
        await self.redis.aclose()

    async def drain(self) -> None:
        """Wait until every write queued so far has been attempted."""
        await self._idle.wait()

    # -- topics ---------------------------------------------------------------------------------
    def publish(self, topic: str, message: dict[str, Any]) -> None:
        payload = json.dumps({"from": self.node.id, "topic": topic, "message": message}, ensure_ascii=False)
        channel = self.key("events")
        self.enqueue(lambda r: r.publish(channel, payload))

    def subscribe(self, topic: str, listener: Listener) -> None:
        self._listeners.setdefault(topic, []).append(listener)

    def enqueue(self, write: Write) -> None:
        """Queue a write; the drain task applies writes one at a time, in order."""
        try:
            self._outbound.put_nowait(write)
            self._idle.clear()
        except asyncio.QueueFull:
            log.warning("cluster: %d writes waiting for Redis, dropping one", OUTBOUND_LIMIT)

    async def _drain(self) -> None:
        while True:
            write = await self._outbound.get()
            try:
                await write(self.redis)
                if self._write_failing:
                    log.info("cluster: writes reach Redis again")
                self._write_failing = False
            except (RedisError, OSError, ClusterUnavailable) as exc:
                if not self._write_failing:
                    log.warning("cluster: a write to Redis failed (%s); writes are dropped until it is back", exc)
                self._write_failing = True
            except Exception:
                log.exception("cluster: a write failed")
            finally:
                if self._outbound.empty():
                    self._idle.set()

    async def _subscriber(self, ready: asyncio.Event) -> None:
        """Receive the other processes' messages. redis-py re-subscribes by itself after a short
        outage; a longer one ends up here, and the channel is subscribed again with back-off."""
        delay = 0.2
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.key("events"))
                ready.set()
                delay = 0.2
                while True:
                    raw = await pubsub.get_message(timeout=1.0)
                    if raw is not None:
                        self._dispatch(raw.get("data"))
            except (RedisError, OSError) as exc:
                log.debug("cluster: the events channel dropped (%s); subscribing again", exc)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    def _dispatch(self, data: Any) -> None:
        try:
            envelope = json.loads(data)
            sender, topic, message = envelope["from"], envelope["topic"], envelope["message"]
        except (TypeError, ValueError, KeyError):
            log.warning("cluster: ignoring a malformed message on the events channel")
            return
        if sender == self.node.id or not isinstance(message, dict):
            return
        for listener in list(self._listeners.get(topic, ())):
            try:
                listener(message)
            except Exception:
                log.exception("cluster: a %s listener failed", topic)

    async def _server_run_id(self) -> str:
        info = await self.redis.info("server")
        return str(info.get("run_id", ""))

    # -- heartbeat ------------------------------------------------------------------------------
    async def _heartbeat(self) -> None:
        """Every beat: notice a Redis that restarted (another ``run_id``) or came back after an
        outage, and put this process's state back."""
        failing = False
        while True:
            await asyncio.sleep(self.heartbeat)
            try:
                run_id = await self._server_run_id()
                reset = run_id != self._run_id
                self._run_id = run_id
                if reset and self._configured_secret is None:
                    # Peers keep the secret they read at start; put it back for processes that start now.
                    await self.redis.set(self.key("secret"), self.secret, nx=True)
                await self._beat()
            except (RedisError, OSError) as exc:
                if not failing:
                    log.warning("cluster: lost Redis (%s); sessions carry on here, retrying", exc)
                failing = True
                continue
            if reset or failing:
                log.info("cluster: Redis is back (%s)", "restarted empty: state republished" if reset else "same data")
                for hook in list(self.on_reset if reset else self.on_reconnect):
                    try:
                        await hook()
                    except (RedisError, OSError) as exc:
                        log.warning("cluster: could not restore state after reconnecting: %s", exc)
            failing = False

    async def _beat(self) -> None:
        """Say this node is alive; re-publish its sessions and refresh its held locks."""
        local = self.local_sessions()
        pipe = self.redis.pipeline()
        pipe.hset(self.key("nodes"), self.node.id, self.node.url)
        pipe.set(self.key(f"alive:{self.node.id}"), "1", px=int(self.heartbeat * 3000))
        gone = self._tracked - set(local)
        if gone:
            pipe.hdel(self.key("sessions"), *gone)
        if local:
            pipe.hset(self.key("sessions"), mapping={sid: self._entry(s) for sid, s in local.items()})
            for sid in local:  # back after a Redis that restarted empty
                pipe.set(self.key(f"home:{sid}"), self.node.url, px=int(HOME_TTL * 1000), nx=True)
        for session_id, operator in self.held_locks().items():
            pipe.set(self.key(f"lock:{session_id}"), operator, px=int(LOCK_TTL * 1000))
        await pipe.execute()
        self._tracked = set(local)

    # -- the session registry ---------------------------------------------------------------------
    def _entry(self, summary: dict[str, Any]) -> str:
        return json.dumps({"node": self.node.id, "summary": summary}, ensure_ascii=False)

    def track(self, session_id: str, summary: dict[str, Any]) -> None:
        new = session_id not in self._tracked
        self._tracked.add(session_id)
        entry, sessions = self._entry(summary), self.key("sessions")
        self.enqueue(lambda r: r.hset(sessions, session_id, entry))
        if new:
            home, url = self.key(f"home:{session_id}"), self.node.url
            self.enqueue(lambda r: r.set(home, url, px=int(HOME_TTL * 1000)))

    def untrack(self, session_id: str) -> None:
        self._tracked.discard(session_id)
        sessions, lock = self.key("sessions"), self.key(f"lock:{session_id}")

        async def write(r: aioredis.Redis) -> None:
            pipe = r.pipeline()
            pipe.hdel(sessions, session_id)
            pipe.delete(lock)
            await pipe.execute()

        self.enqueue(write)

    async def owner(self, session_id: str) -> Node | None:
        found = await self.lookup(session_id)
        return None if found is None else found[0]

    async def lookup(self, session_id: str) -> tuple[Node, dict[str, Any]] | None:
        """The live process that owns ``session_id`` and the session's summary, or None."""
        try:
            raw = await self.redis.hget(self.key("sessions"), session_id)
            if raw is None:
                return None
            entry = json.loads(raw)
            node_id, summary = entry["node"], dict(entry.get("summary") or {})
            if node_id == self.node.id:
                return self.node, summary
            pipe = self.redis.pipeline()
            pipe.exists(self.key(f"alive:{node_id}"))
            pipe.hget(self.key("nodes"), node_id)
            alive, url = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise ClusterUnavailable(f"Redis is unreachable: {exc}") from exc
        except (TypeError, ValueError, KeyError):
            return None  # a malformed entry: nobody owns it
        if not alive or not url:
            return None
        return Node(node_id, url), summary

    async def peers(self) -> list[Node]:
        """The other live processes."""
        try:
            nodes = await self.redis.hgetall(self.key("nodes"))
            others = sorted((str(k), str(v)) for k, v in nodes.items() if k != self.node.id)
            if not others:
                return []
            flags = await self.redis.mget([self.key(f"alive:{n}") for n, _ in others])
        except (RedisError, OSError) as exc:
            raise ClusterUnavailable(f"Redis is unreachable: {exc}") from exc
        return [Node(n, url) for (n, url), flag in zip(others, flags, strict=True) if flag is not None]

    async def home(self, session_id: str) -> str | None:
        """The base URL of the process whose store holds ``session_id``'s transcript, if known."""
        try:
            url = await self.redis.get(self.key(f"home:{session_id}"))
        except (RedisError, OSError) as exc:
            raise ClusterUnavailable(f"Redis is unreachable: {exc}") from exc
        return None if url is None else str(url)

    async def sessions(self) -> list[dict[str, Any]]:
        try:
            entries = await self.redis.hgetall(self.key("sessions"))
            decoded: list[tuple[str, str, dict[str, Any]]] = []
            for session_id, raw in entries.items():
                with contextlib.suppress(TypeError, ValueError, KeyError):
                    entry = json.loads(raw)
                    if entry["node"] != self.node.id:
                        decoded.append((str(session_id), str(entry["node"]), dict(entry["summary"])))
            nodes = sorted({node for _, node, _ in decoded})
            alive: dict[str, bool] = {}
            if nodes:
                flags = await self.redis.mget([self.key(f"alive:{n}") for n in nodes])
                alive = {n: flag is not None for n, flag in zip(nodes, flags, strict=True)}
            dead = [sid for sid, node, _ in decoded if not alive.get(node)]
            if dead:
                await self.redis.hdel(self.key("sessions"), *dead)  # their process is gone
        except (RedisError, OSError) as exc:
            raise ClusterUnavailable(f"Redis is unreachable: {exc}") from exc
        return [summary for _, node, summary in decoded if alive.get(node)]

    # -- takeover locks ---------------------------------------------------------------------------
    async def lock(self, session_id: str, operator: str) -> str:
        key = self.key(f"lock:{session_id}")
        try:
            for _ in range(3):
                if await self.redis.set(key, operator, nx=True, px=int(LOCK_TTL * 1000)):
                    return operator
                holder = await self.redis.get(key)
                if holder == operator:
                    await self.redis.pexpire(key, int(LOCK_TTL * 1000))
                    return operator
                if holder is not None:
                    return str(holder)
                # Released between the two calls: try again.
        except (RedisError, OSError) as exc:
            raise ClusterUnavailable(f"Redis is unreachable: {exc}") from exc
        raise ClusterUnavailable("the takeover lock changed hands too often to be taken")

    async def unlock(self, session_id: str, operator: str) -> None:
        try:
            await self.redis.eval(_UNLOCK, 1, self.key(f"lock:{session_id}"), operator)
        except (RedisError, OSError) as exc:
            raise ClusterUnavailable(f"Redis is unreachable: {exc}") from exc

    async def holder(self, session_id: str) -> str | None:
        try:
            value = await self.redis.get(self.key(f"lock:{session_id}"))
        except (RedisError, OSError) as exc:
            raise ClusterUnavailable(f"Redis is unreachable: {exc}") from exc
        return None if value is None else str(value)


def check_reachable(url: str, timeout: float = 3.0) -> str | None:
    """None when Redis answers at ``url``, else one line saying what failed (for ``avatar serve``)."""
    import redis as sync_redis

    try:
        client = sync_redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    except ValueError as exc:
        return f"redis_url: {exc}"
    try:
        client.ping()
    except (RedisError, OSError) as exc:
        return f"cannot reach Redis at {describe_url(url)}: {exc}"
    finally:
        client.close()
    return None
