"""The cluster against a real redis-server (Debian's, started here on a free port with no
persistence, killed after): the session registry, dead processes, topics, takeover locks,
a Redis restart mid-run, and a clear error when Redis cannot be reached."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from avatar.cluster.base import ClusterUnavailable, LocalCluster, Node
from avatar.cluster.redis_cluster import RedisCluster, check_reachable

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A throw-away redis-server: no persistence, its own directory, one port (kept across a
    ``restart``, which comes back empty like a real restart without persistence)."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        if not Path(REDIS_SERVER).exists():
            pytest.fail("redis-server not found: run scripts/setup.sh --dev (installs Debian's redis-server)")
        self.workdir = workdir
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir), "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 10
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.exceptions.ConnectionError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("redis-server did not start") from None
                    time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


async def eventually(predicate: Callable[[], Any], within: float = 10.0) -> None:
    """Wait for state that other tasks (a pub/sub message, a heartbeat) change."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(0.02)


def node(name: str) -> Node:
    return Node(name, f"http://{name}.invalid:8080")


@pytest.fixture
async def pair(redis_server: RedisServer) -> AsyncIterator[tuple[RedisCluster, RedisCluster]]:
    a = RedisCluster(redis_server.url, node("a"), heartbeat=0.2)
    b = RedisCluster(redis_server.url, node("b"), heartbeat=0.2)
    await a.start()
    await b.start()
    yield a, b
    await a.close()
    await b.close()


async def test_registry_owner_and_summaries(pair: tuple[RedisCluster, RedisCluster]) -> None:
    a, b = pair
    a.track("s1", {"session_id": "s1", "control": "ai"})
    await a.drain()
    assert await b.owner("s1") == a.node
    assert await a.owner("s1") == a.node
    assert await b.sessions() == [{"session_id": "s1", "control": "ai"}]
    assert await a.sessions() == []  # a process's own sessions come from its desk, not Redis
    a.track("s1", {"session_id": "s1", "control": "operator"})
    await a.drain()
    assert (await b.sessions())[0]["control"] == "operator"
    a.untrack("s1")
    await a.drain()
    assert await b.owner("s1") is None and await b.sessions() == []
    assert await b.owner("never-was") is None


async def test_the_sessions_of_a_dead_process_disappear(pair: tuple[RedisCluster, RedisCluster]) -> None:
    a, b = pair
    a.track("s1", {"session_id": "s1"})
    await a.drain()
    # A process killed without leaving: its heartbeat key expires.
    for task in a._tasks:
        task.cancel()
    await b.redis.delete(b.key("alive:a"))
    assert await b.owner("s1") is None
    assert await b.sessions() == []
    assert not await b.redis.hexists(b.key("sessions"), "s1")  # cleaned up by whoever noticed


async def test_the_heartbeat_republishes_and_withdraws_sessions(redis_server: RedisServer) -> None:
    live: dict[str, dict[str, Any]] = {"s1": {"session_id": "s1"}}
    a = RedisCluster(redis_server.url, node("a"), heartbeat=0.05, local_sessions=lambda: dict(live))
    b = RedisCluster(redis_server.url, node("b"), heartbeat=0.05)
    await a.start()
    await b.start()
    try:
        assert await b.owner("s1") == a.node
        live.clear()
        live["s2"] = {"session_id": "s2"}
        await eventually(lambda: _owned_by(b, "s2", a.node))
        await eventually(lambda: _gone(b, "s1"))
    finally:
        await a.close()
        await b.close()
    # Leaving withdraws everything the process published.
    probe = redis.Redis.from_url(redis_server.url)
    try:
        assert probe.hlen("avatar:sessions") == 0 and probe.hlen("avatar:nodes") == 0
    finally:
        probe.close()


async def _owned_by(cluster: RedisCluster, session_id: str, owner: Node) -> bool:
    try:
        return await cluster.owner(session_id) == owner
    except ClusterUnavailable:  # Redis is restarting
        return False


async def _gone(cluster: RedisCluster, session_id: str) -> bool:
    return await cluster.owner(session_id) is None


async def test_topics_reach_the_other_processes_only(pair: tuple[RedisCluster, RedisCluster]) -> None:
    a, b = pair
    got_a: list[dict[str, Any]] = []
    got_b: list[dict[str, Any]] = []
    a.subscribe("hub", got_a.append)
    b.subscribe("hub", got_b.append)
    b.subscribe("other", lambda m: got_b.append({"wrong topic": m}))
    for i in range(5):
        a.publish("hub", {"n": i, "text": "héllo 你好"})
    await eventually(lambda: len(got_b) == 5)
    assert got_b == [{"n": i, "text": "héllo 你好"} for i in range(5)]  # in order, intact
    assert got_a == []
    # A malformed message on the channel is ignored, not fatal.
    await a.redis.publish(a.key("events"), "not json")
    b.publish("hub", {"n": 99})
    await eventually(lambda: got_a == [{"n": 99}])


async def test_takeover_locks(pair: tuple[RedisCluster, RedisCluster]) -> None:
    a, b = pair
    assert await a.lock("s1", "alice") == "alice"
    assert await b.lock("s1", "bob") == "alice"  # one holder, whichever process asks
    assert await a.lock("s1", "alice") == "alice"  # idempotent for the holder
    assert await b.holder("s1") == "alice"
    await b.unlock("s1", "bob")  # not bob's to release
    assert await a.holder("s1") == "alice"
    await a.unlock("s1", "alice")
    assert await a.holder("s1") is None
    assert await b.lock("s1", "bob") == "bob"
    # A session that ends drops its lock.
    a.track("s1", {"session_id": "s1"})
    a.untrack("s1")
    await a.drain()
    assert await b.holder("s1") is None
    # Concurrent attempts: exactly one operator wins.
    winners = await asyncio.gather(*(c.lock("s2", name) for c, name in ((a, "x"), (b, "y"), (a, "z"), (b, "w"))))
    assert len(set(winners)) == 1 and winners[0] in {"x", "y", "z", "w"}


async def test_redis_restart_mid_run(redis_server: RedisServer) -> None:
    held = {"s1": "alice"}
    a = RedisCluster(redis_server.url, node("a"), heartbeat=0.1,
                     local_sessions=lambda: {"s1": {"session_id": "s1"}}, held_locks=lambda: dict(held))
    b = RedisCluster(redis_server.url, node("b"), heartbeat=0.1)
    resets: list[str] = []

    async def on_reset() -> None:
        resets.append("a")

    a.on_reset.append(on_reset)
    got: list[dict[str, Any]] = []
    b.subscribe("hub", got.append)
    await a.start()
    await b.start()
    try:
        assert await b.owner("s1") == a.node
        secret = a.secret
        redis_server.restart()  # comes back empty
        # Writes made while Redis is away are dropped, never raised.
        a.publish("hub", {"lost": True})
        await eventually(lambda: _owned_by(b, "s1", a.node), within=15)
        await eventually(lambda: resets == ["a"], within=15)
        assert await b.holder("s1") == "alice"  # the holder's lock is back too
        assert a.secret == secret and b.secret == secret
        # Both subscribers are back on the channel.
        a.publish("hub", {"after": True})
        await eventually(lambda: {"after": True} in got, within=15)
    finally:
        await a.close()
        await b.close()


async def test_unreachable_redis_is_a_clear_error(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(ClusterUnavailable, match=r"cannot reach Redis at redis://127\.0\.0\.1"):
        await RedisCluster(url, node("a")).start()


def test_serve_refuses_to_start_without_its_redis(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    problem = check_reachable(url, timeout=0.5)
    assert problem is not None and problem.startswith("cannot reach Redis at")
    assert "secret" not in (check_reachable("redis://user:secret@127.0.0.1:1/0", timeout=0.5) or "")
    # The server refuses to start, with one line and exit code 2.
    proc = subprocess.run(
        [sys.executable, "-m", "avatar", "serve", "--redis", url, "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "cannot reach Redis" in proc.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "avatar", "serve", "--redis", "http://nope", "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=60,
    )
    assert bad.returncode == 2 and "redis_url" in bad.stderr


async def test_local_cluster_is_one_process_on_its_own() -> None:
    local = LocalCluster(node("solo"))
    await local.start()
    local.track("s1", {"session_id": "s1"})
    assert await local.owner("s1") == local.node
    assert await local.lookup("s1") == (local.node, {"session_id": "s1"})
    assert await local.sessions() == [] and await local.peers() == [] and await local.home("s1") is None
    assert await local.lock("s1", "alice") == "alice"
    assert await local.lock("s1", "bob") == "alice"
    await local.unlock("s1", "alice")
    assert await local.holder("s1") is None
    local.untrack("s1")
    assert await local.owner("s1") is None
    await local.close()


# -- what else the processes share: comment queues, moderation, sign-in limits, lists, transcripts --------------
class FakeClock:
    def __init__(self, t: float = 1_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


async def test_a_stage_comment_queue_shared_by_two_processes(pair: tuple[RedisCluster, RedisCluster]) -> None:
    from avatar.broadcast.comments import make_comment
    from avatar.cluster.comments import RedisCommentQueue

    a, b = pair
    on_a, on_b = RedisCommentQueue(a, "stage1", limit=3), RedisCommentQueue(b, "stage1", limit=3)
    # Ids are unique per stage whichever process hands them out.
    ids = [await on_a.next_id(), await on_b.next_id(), await on_a.next_id(), await on_b.next_id()]
    assert ids == ["c1", "c2", "c3", "c4"]
    comments = [make_comment(cid, f"user{i}", f"question {i}") for i, cid in enumerate(ids)]
    assert await on_a.push(comments[0]) == 1
    assert await on_b.push(comments[1]) == 2
    assert await on_a.push(comments[2]) == 3
    assert await on_b.push(comments[3]) is None  # full at 3: nothing stored
    assert [c.id for c in await on_b.list()] == ["c1", "c2", "c3"]
    assert await on_a.list() == comments[:3]  # everything round-trips (user, text, lang, time)
    assert await on_b.remove("c2") == comments[1] and await on_a.remove("c2") is None
    assert await on_a.pop() == comments[0]
    assert await on_b.pop() == comments[2] and await on_a.pop() is None
    # Another stage has its own queue and ids; clearing one leaves the other.
    other = RedisCommentQueue(b, "stage2")
    assert await other.next_id() == "c1"
    await other.push(make_comment("c1", "x", "hello"))
    await on_a.push(comments[3])
    await on_a.clear()
    assert await on_b.list() == [] and [c.id for c in await other.list()] == ["c1"]
    assert await on_b.next_id() == "c1"  # the cleared stage starts again


async def test_moderation_limits_hold_across_processes(pair: tuple[RedisCluster, RedisCluster]) -> None:
    from avatar.cluster.comments import RedisCommentStore

    a, b = pair
    clock = FakeClock()
    on_a, on_b = RedisCommentStore(a, clock).moderator("s"), RedisCommentStore(b, clock).moderator("s")
    # Three comments a minute per user, wherever they are posted.
    assert (await on_a.check("Li", "first question")).accepted
    assert (await on_b.check("li ", "second question")).accepted  # the same user: case and spaces ignored
    assert (await on_a.check("Li", "third question")).accepted
    limited = await on_b.check("Li", "fourth question")
    assert limited.reason == "rate_limited" and limited.retry_after == 60.0
    clock.t += 30
    assert (await on_a.check("Li", "still too soon")).retry_after == 30.0
    assert (await on_b.check("Wang", "my own question")).accepted  # other users are not slowed
    clock.t += 60.5
    assert (await on_b.check("Li", "back again")).accepted
    # Repeats: the same user's text again, and a copy-paste crowd across processes.
    assert (await on_b.check("Li", "back AGAIN!!")).reason == "repeated"
    assert (await on_a.check("u1", "好看好看")).accepted
    assert (await on_b.check("u2", "好看 好看")).accepted
    crowd = await on_a.check("u3", "好看好看！")
    assert crowd.reason == "repeated" and crowd.detail == "many users"
    clock.t += 601
    assert (await on_b.check("u3", "好看好看")).accepted  # the repeat window has passed
    # Another stage's moderation is its own.
    assert (await RedisCommentStore(b, clock).moderator("t").check("Li", "back again")).accepted
    # The keys expire by themselves (no stage's state outlives its windows).
    keys = [k async for k in a.redis.scan_iter(match=a.key("stage:s:*"))]
    ttls = [await a.redis.pttl(k) for k in keys]
    assert ttls and all(0 < ttl <= 600_000 for ttl in ttls)


async def test_sign_in_failures_count_on_every_process(pair: tuple[RedisCluster, RedisCluster]) -> None:
    from avatar.cluster.limits import SharedLoginLimiter

    a, b = pair
    clock = FakeClock()
    on_a, on_b = SharedLoginLimiter(a, 5, 300.0, clock), SharedLoginLimiter(b, 5, 300.0, clock)
    for limiter in (on_a, on_b, on_a, on_b):
        assert await limiter.retry_after("alice", "10.0.0.1") is None
        await limiter.failed("alice", "10.0.0.1")
        clock.t += 1
    assert await on_b.retry_after("ALICE", "10.0.0.9") is None  # four failures so far
    await on_b.failed("Alice", "10.0.0.2")  # the fifth, from elsewhere: the name is blocked everywhere
    assert await on_a.retry_after("alice", "10.0.0.3") == 300.0 - 4
    assert await on_b.retry_after("bob", "10.0.0.1") is None  # 4 from that address: not yet
    await on_a.failed("carol", "10.0.0.1")
    assert await on_b.retry_after("bob", "10.0.0.1") == 300.0 - 4  # that address has 5 now
    await on_b.succeeded("alice")  # a right password clears the name's count (not the address's)
    assert await on_a.retry_after("alice", "10.0.0.3") is None
    clock.t += 300
    assert await on_a.retry_after("bob", "10.0.0.1") is None  # the window has passed


async def test_lookup_peers_and_homes(pair: tuple[RedisCluster, RedisCluster]) -> None:
    a, b = pair
    a.track("s1", {"session_id": "s1", "mode": "broadcast"})
    await a.drain()
    assert await b.lookup("s1") == (a.node, {"session_id": "s1", "mode": "broadcast"})
    assert await b.lookup("nope") is None
    assert await b.peers() == [a.node] and await a.peers() == [b.node]
    # Where the transcript is stored outlives the session.
    assert await b.home("s1") == a.node.url
    a.untrack("s1")
    await a.drain()
    assert await b.owner("s1") is None and await b.home("s1") == a.node.url
    assert await b.home("nope") is None
