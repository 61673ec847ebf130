"""Two server applications in one test process, sharing one real redis-server: what needs a
fake clock or a Redis outage, which the two-process test (test_multiprocess.py) cannot
arrange. An operator's desk closing on one process starts the grace period of the session
they hold on the other (and reopening it cancels it); signing out releases sessions held on
other processes; broadcast stages and their comments are reached through any process (a comment
is queued and moderated in Redis by the process that receives it, even when the owner cannot be
reached over HTTP); every process lists every process's sessions and stages and serves the
transcript of a session that ended on another; failed sign-ins count on every process; and a
Redis restart mid-call loses no session."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from avatar.broadcast.show_routes import SHOWS
from avatar.cluster.app import CLUSTER
from avatar.operator.service import OperatorService
from avatar.server.app import SESSIONS
from avatar.server.engines import Engines
from avatar.server.operator_routes import OPERATORS
from tests.conftest import API_TOKEN, make_settings
from tests.test_cluster import RedisServer, eventually, free_port, redis_server  # noqa: F401  (the fixture)
from tests.test_server import connect

PASSWORD = "correct horse battery"
Client = TestClient  # type: ignore[type-arg]


class Gate:
    """A fake ``sleep`` for the takeover desk: grace periods end when the test says so."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.waiting = 0

    async def __call__(self, seconds: float) -> None:
        self.waiting += 1
        try:
            await self.open.wait()
        finally:
            self.waiting -= 1


@pytest.fixture
async def pair(
    aiohttp_client: Callable[..., Awaitable[Client]], engines: Engines, tmp_path: Path,
    redis_server: RedisServer,  # noqa: F811
) -> AsyncIterator[tuple[Client, Client]]:
    from avatar.server.app import create_app

    clients = []
    for name in ("a", "b"):
        port = free_port()
        settings = make_settings(
            tmp_path / name, redis_url=redis_server.url, advertise_url=f"http://127.0.0.1:{port}", max_sessions=4,
        )
        clients.append(await aiohttp_client(create_app(settings, engines=engines), server_kwargs={"port": port}))
    yield clients[0], clients[1]


def ops(client: Client) -> OperatorService:
    return client.app[OPERATORS]


async def sign_in(client: Client, name: str) -> dict[str, str]:
    if ops(client).store.operator(name) is None:
        await asyncio.to_thread(ops(client).accounts.add, name, PASSWORD)
    resp = await client.post("/api/operator/login", json={"name": name, "password": PASSWORD})
    assert resp.status == 200, await resp.text()
    return {"Authorization": f"Bearer {(await resp.json())['token']}"}


async def control(client: Client, session_id: str) -> str:
    return ops(client).desk.seats[session_id].control.value


async def test_grace_and_sign_out_follow_the_operator_across_processes(pair: tuple[Client, Client]) -> None:
    a, b = pair
    gate = Gate()
    ops(a).desk.sleep = gate
    customer, sid = await connect(a)
    try:
        alice = await sign_in(b, "alice")
        ws = await b.ws_connect("/api/operator/ws", headers=alice)
        hello = await ws.receive_json()
        assert hello["type"] == "hello" and [s["session_id"] for s in hello["sessions"]] == [sid]
        resp = await b.post(f"/api/sessions/{sid}/takeover", headers=alice)
        assert resp.status == 200, await resp.text()
        seat = ops(a).desk.seats[sid]
        await eventually(lambda: ops(a).hub.online("alice"))  # A knows her desk is open on B
        assert seat.grace is None

        # Her browser dies: A starts the grace period of the session she holds there.
        await ws.close()
        await eventually(lambda: seat.grace is not None and gate.waiting == 1)
        assert seat.holder == "alice"
        # She comes back (on B) in time: the grace period is cancelled, she keeps the session.
        ws = await b.ws_connect("/api/operator/ws", headers=alice)
        await eventually(lambda: seat.grace is None)
        assert seat.holder == "alice" and seat.control.value == "operator"

        # Gone again, and the grace period runs out: the session goes back to the AI.
        await ws.close()
        await eventually(lambda: seat.grace is not None)
        gate.open.set()
        await eventually(lambda: seat.control.value == "ai" and seat.holder is None)
        events = [e for e in ops(a).store.events(sid) if e.kind == "handback"]
        assert events and events[-1].detail == {"reason": "grace_expired"}

        # Signing out on B hands back what she holds on A at once.
        gate.open.clear()
        resp = await b.post(f"/api/sessions/{sid}/takeover", headers=alice)
        assert resp.status == 200
        resp = await b.post("/api/operator/logout", headers=alice)
        assert resp.status == 200, await resp.text()
        assert seat.control.value == "ai" and seat.holder is None
        assert (await b.get("/api/operator/sessions", headers=alice)).status == 401
        # The token is revoked on A too.
        assert (await a.get("/api/operator/sessions", headers=alice)).status == 401
    finally:
        await customer.close()


async def test_stages_and_comments_through_any_process(pair: tuple[Client, Client]) -> None:
    a, b = pair
    api = {"Authorization": f"Bearer {API_TOKEN}"}
    # An operator-driven stage: nothing answers comments by itself, so the queue stays as posted.
    resp = await a.post("/api/stages", json={"driver": "operator"}, headers=api)
    assert resp.status == 201, await resp.text()
    stage_id = (await resp.json())["stage_id"]
    # B does not have the stage; it answers from A, and lists it with its own.
    resp = await b.get(f"/api/stages/{stage_id}", headers=api)
    assert resp.status == 200 and (await resp.json())["stage_id"] == stage_id
    for client in (a, b):
        listed = await (await client.get("/api/stages", headers=api)).json()
        assert [s["stage_id"] for s in listed["stages"]] == [stage_id] and "unreachable" not in listed
    assert (await b.get("/api/stages/no-such-stage", headers=api)).status == 404
    resp = await b.post("/api/stages/no-such-stage/comments", json={"user": "Li", "text": "hello?"}, headers=api)
    assert resp.status == 404 and "no-such-stage" in (await resp.json())["error"]

    # A cannot be reached over HTTP (its address in Redis points nowhere for a moment): forwarding
    # fails, yet a comment posted on B is moderated and queued there, and A's show has it.
    cluster_a: Any = a.app[CLUSTER]
    await cluster_a.redis.hset(cluster_a.key("nodes"), cluster_a.node.id, "http://127.0.0.1:1")
    assert (await b.get(f"/api/stages/{stage_id}", headers=api)).status == 502
    url = f"/api/stages/{stage_id}/comments"
    posted = []
    for client, user, text in [(a, "Li", "What are your hours?"), (b, "li", "And on Sundays?"),
                               (b, "Ann", "What are your hours?"), (a, "Li", "Is there parking?")]:
        resp = await client.post(url, json={"user": user, "text": text}, headers=api)
        assert resp.status == 202, await resp.text()
        posted.append(await resp.json())
    # Ids are unique on the stage whichever process took the comment; positions count the shared queue.
    assert [p["comment"]["id"] for p in posted] == ["c1", "c2", "c3", "c4"]
    assert [p["position"] for p in posted] == [1, 2, 3, 4]
    # Moderation holds across the processes: Li's fourth comment in a minute (two were on A), and the
    # third user with the same text.
    limited = await (await b.post(url, json={"user": "LI", "text": "One more thing"}, headers=api)).json()
    assert limited["queued"] is False and limited["reason"] == "rate_limited" and limited["retry_after"] > 0
    crowd = await (await b.post(url, json={"user": "Bo", "text": "what are your HOURS"}, headers=api)).json()
    assert crowd["queued"] is False and crowd["reason"] == "repeated"
    show = a.app[SHOWS].stages[stage_id].show
    assert [c.id for c in await show.waiting()] == ["c1", "c2", "c3", "c4"]
    assert [c.user for c in await show.waiting()] == ["Li", "li", "Ann", "Li"]
    await cluster_a.redis.hset(cluster_a.key("nodes"), cluster_a.node.id, cluster_a.node.url)

    # Operator actions are the owner's (its show holds the picked ones): forwarded to A.
    olga = await sign_in(b, "olga")
    resp = await b.post(f"{url}/c3/pick", headers=olga)
    assert resp.status == 200, await resp.text()
    resp = await b.post(f"{url}/c2/skip", headers=olga)
    assert resp.status == 200, await resp.text()
    listed = await (await b.get(url, headers=api)).json()
    assert [c["id"] for c in listed["comments"]] == ["c3", "c1", "c4"]
    assert listed["history"][0]["id"] == "c2" and listed["history"][0]["by"] == "olga"

    # The stage ends: its queue leaves Redis.
    queue_key = cluster_a.key(f"stage:{stage_id}:queue")
    assert await cluster_a.redis.exists(queue_key)
    assert (await b.delete(f"/api/stages/{stage_id}", headers=api)).status == 200
    await eventually(lambda: _gone(cluster_a, queue_key))
    await cluster_a.drain()  # the registry has forgotten the stage
    resp = await b.post(url, json={"user": "Zoe", "text": "Still there?"}, headers=api)
    assert resp.status == 404


async def _gone(cluster: Any, key: str) -> bool:
    return not await cluster.redis.exists(key)


async def test_session_lists_and_ended_transcripts_from_any_process(pair: tuple[Client, Client]) -> None:
    a, b = pair
    api = {"Authorization": f"Bearer {API_TOKEN}"}
    customer, sid = await connect(a)
    try:
        for client in (a, b):
            listed = await (await client.get("/api/sessions", headers=api)).json()
            assert [s["session_id"] for s in listed["sessions"]] == [sid] and "unreachable" not in listed
        resp = await b.post(f"/api/sessions/{sid}/say", headers=api, json={"text": "Your card is on its way."})
        assert resp.status == 200, await resp.text()
        session = a.app[SESSIONS].get(sid)
        assert session is not None
        await eventually(lambda: any(e.text == "Your card is on its way." for e in session.transcript), within=30)
        assert (await b.delete(f"/api/sessions/{sid}", headers=api)).status == 200
    finally:
        await customer.close()
    assert (await (await b.get("/api/sessions", headers=api)).json())["sessions"] == []
    # Ended: A's store holds the transcript (B has its own data directory); B fetches it from A.
    assert ops(b).store.transcript(sid) == []
    resp = await b.get(f"/api/sessions/{sid}/transcript", headers=api)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["session_id"] == sid and "Your card is on its way." in [t["text"] for t in body["transcript"]]
    assert (await b.get("/api/sessions/no-such-session/transcript", headers=api)).status == 404


async def test_sign_in_failures_are_limited_across_processes(pair: tuple[Client, Client]) -> None:
    a, b = pair
    await sign_in(a, "alice")  # accounts on both processes' stores
    await sign_in(b, "alice")
    wrong = {"name": "alice", "password": "not her password"}
    for client in (a, b, a, b, a):  # five failures, no more than three on either process
        resp = await client.post("/api/operator/login", json=wrong)
        assert resp.status == 401
    for client in (a, b):  # her own limiter on each process would still let her try: Redis does not
        resp = await client.post("/api/operator/login", json={"name": "alice", "password": PASSWORD})
        assert resp.status == 429 and "too many failed sign-ins" in (await resp.json())["error"]
        assert int(resp.headers["Retry-After"]) > 0
    assert ops(b).limiter.retry_after("alice", "127.0.0.1") is None


async def test_a_redis_restart_loses_no_call(pair: tuple[Client, Client], redis_server: RedisServer) -> None:  # noqa: F811
    a, b = pair
    customer, sid = await connect(a)
    try:
        alice = await sign_in(b, "alice")
        redis_server.stop()
        # Redis is away: the call goes on, the owner still takes orders; B cannot find it (503).
        bob = await sign_in(a, "bob")
        resp = await a.post(f"/api/sessions/{sid}/takeover", headers=bob)
        assert resp.status == 200, await resp.text()
        resp = await a.post(f"/api/sessions/{sid}/say", headers=bob, json={"text": "Still here."})
        assert resp.status == 200
        await customer.wait_for_event(lambda e: e["type"] == "caption" and e["text"] == "Still here.")
        resp = await b.post(f"/api/sessions/{sid}/takeover", headers=alice)
        assert resp.status == 503 and "error" in await resp.json()
        # Nor its transcript: not stored on B, and the registry cannot say where it is (not a 404).
        resp = await b.get(f"/api/sessions/{sid}/transcript", headers=alice)
        assert resp.status == 503 and "registry" in (await resp.json())["error"]
        # B's desk list holds B's own sessions only, and says so (not a silently empty list).
        listed = await (await b.get("/api/operator/sessions", headers=alice)).json()
        assert listed["sessions"] == [] and "registry is unreachable" in listed["partial"]
        listed = await (await a.get("/api/operator/sessions", headers=bob)).json()
        assert [s["session_id"] for s in listed["sessions"]] == [sid] and "partial" in listed

        redis_server.start()  # back, empty
        cluster_b: Any = b.app[CLUSTER]

        async def found() -> bool:
            try:
                return await cluster_b.owner(sid) is not None
            except Exception:
                return False

        await eventually(found, within=20)
        listed = await (await b.get("/api/operator/sessions", headers=alice)).json()
        assert "partial" not in listed
        # The holder, the lock and alice's sign-in are back: B forwards, A refuses her (bob holds it).
        resp = await b.post(f"/api/sessions/{sid}/takeover", headers=alice)
        assert resp.status == 409 and "bob" in (await resp.json())["error"]
        resp = await a.post(f"/api/sessions/{sid}/handback", headers=bob)
        assert resp.status == 200
        resp = await b.post(f"/api/sessions/{sid}/takeover", headers=alice)
        assert resp.status == 200, await resp.text()
        assert customer.pc.connectionState == "connected"
    finally:
        await customer.close()


async def test_one_line_to_sessions_on_two_processes(pair: tuple[Client, Client]) -> None:
    a, b = pair
    on_a, sid_a = await connect(a)
    on_b, sid_b = await connect(b)
    try:
        alice = await sign_in(b, "alice")
        for sid in (sid_a, sid_b):
            resp = await b.post(f"/api/sessions/{sid}/takeover", headers=alice)
            assert resp.status == 200, await resp.text()
        listed = await (await b.get("/api/operator/sessions", headers=alice)).json()
        assert sorted(listed["held"]) == sorted([sid_a, sid_b])

        body = {"sessions": [sid_a, sid_b], "text": "One moment, both of you."}
        resp = await b.post("/api/operator/say", headers=alice, json=body)
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["sessions"] == [sid_a, sid_b]
        for customer in (on_a, on_b):
            await customer.wait_for_event(lambda e: e["type"] == "caption" and e["text"] == body["text"])

        # All or nothing: one of them no longer held, nothing is said anywhere.
        resp = await b.post(f"/api/sessions/{sid_a}/handback", headers=alice)
        assert resp.status == 200
        refused = {"sessions": [sid_b, sid_a], "text": "This is never said."}
        resp = await b.post("/api/operator/say", headers=alice, json=refused)
        assert resp.status == 409 and sid_a in (await resp.json())["error"]
        resp = await b.post("/api/operator/say", headers=alice, json={"sessions": [sid_b, "nope"], "text": "x"})
        assert resp.status == 404 and "nope" in (await resp.json())["error"]
        resp = await b.post(f"/api/sessions/{sid_b}/say", headers=alice, json={"text": "Next line."})
        assert resp.status == 200
        await on_b.wait_for_event(lambda e: e["type"] == "caption" and e["text"] == "Next line.")
        assert not any(e.get("text") == refused["text"] for e in on_a.got.events + on_b.got.events)
    finally:
        await on_a.close()
        await on_b.close()


async def test_an_operator_watches_a_session_of_another_process(pair: tuple[Client, Client]) -> None:
    from tests.rtc_client import RtcCustomer

    a, b = pair
    customer, sid = await connect(a)
    watcher = RtcCustomer()
    try:
        alice = await sign_in(b, "alice")
        # The offer goes to B, which forwards it to A: the media flows between A and the operator.
        resp = await b.post(f"/api/operator/sessions/{sid}/watch", headers=alice, json=await watcher.offer())
        assert resp.status == 200, await resp.text()
        await watcher.accept(await resp.json())
        await eventually(lambda: len(watcher.got.video_pts) > 10, within=20)
        resp = await b.delete(f"/api/operator/sessions/{sid}/watch", headers=alice)
        assert resp.status == 200 and (await resp.json())["closed"] == 1
        resp = await b.get(f"/api/operator/sessions/{sid}/history", headers=alice)
        assert resp.status == 200, await resp.text()
    finally:
        await watcher.close()
        await customer.close()


async def test_a_process_sharing_the_data_dir_leaves_a_live_stage_to_its_owner(
    pair: tuple[Client, Client], aiohttp_client: Callable[..., Awaitable[Client]], engines: Engines,
    tmp_path: Path, redis_server: RedisServer,  # noqa: F811
) -> None:
    from avatar.server.app import create_app

    a, _ = pair
    api = {"Authorization": f"Bearer {API_TOKEN}"}
    resp = await a.post("/api/stages", json={"driver": "script"}, headers=api)
    assert resp.status == 201, await resp.text()
    stage_id = (await resp.json())["stage_id"]
    # A third process starts on A's data dir: the stored stage is on air on A, so it stays there
    # (a second copy would split its viewers between two encoders and two scripts).
    port = free_port()
    settings = make_settings(
        tmp_path / "a", redis_url=redis_server.url, advertise_url=f"http://127.0.0.1:{port}", max_sessions=4,
    )
    c = await aiohttp_client(create_app(settings, engines=engines), server_kwargs={"port": port})
    assert c.app[SESSIONS].get(stage_id) is None
    listed = await (await c.get("/api/stages", headers=api)).json()
    assert [s["stage_id"] for s in listed["stages"]] == [stage_id]  # once: A's, through the cluster
    # A stops (its stage is not ended); C restarting then brings it back.
    await a.close()
    await c.close()
    port = free_port()
    settings = make_settings(
        tmp_path / "a", redis_url=redis_server.url, advertise_url=f"http://127.0.0.1:{port}", max_sessions=4,
    )
    c = await aiohttp_client(create_app(settings, engines=engines), server_kwargs={"port": port})
    assert c.app[SESSIONS].get(stage_id) is not None
