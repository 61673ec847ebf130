"""Two server applications in one test process, sharing one real redis-server: what needs a
fake clock or a Redis outage, which the two-process test (test_multiprocess.py) cannot
arrange. An operator's desk closing on one process starts the grace period of the session
they hold on the other (and reopening it cancels it); signing out releases sessions held on
other processes; broadcast stages and their comments are reached through any process; and a
Redis restart mid-call loses no session."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from avatar.cluster.app import CLUSTER
from avatar.operator.service import OperatorService
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
    resp = await a.post("/api/stages", json={"driver": "operator"}, headers=api)
    assert resp.status == 201, await resp.text()
    stage_id = (await resp.json())["stage_id"]
    # B does not have the stage; it answers from A.
    resp = await b.get(f"/api/stages/{stage_id}", headers=api)
    assert resp.status == 200 and (await resp.json())["stage_id"] == stage_id
    resp = await b.post(f"/api/stages/{stage_id}/comments", json={"user": "Li", "text": "What are your hours?"},
                        headers=api)
    assert resp.status == 202, await resp.text()
    listed = await (await a.get(f"/api/stages/{stage_id}/comments", headers=api)).json()
    assert any(c["text"] == "What are your hours?" for c in listed["comments"])  # queued on A, the owner
    assert (await b.get("/api/stages/no-such-stage", headers=api)).status == 404


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

        redis_server.start()  # back, empty
        cluster_b: Any = b.app[CLUSTER]

        async def found() -> bool:
            try:
                return await cluster_b.owner(sid) is not None
            except Exception:
                return False

        await eventually(found, within=20)
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
