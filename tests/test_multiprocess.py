"""Two ``avatar serve`` processes and one redis-server: a customer (an in-process aiortc peer)
connected to the first, an operator signed in to the second. The operator sees the session,
receives its events, takes it over, speaks through the avatar (the customer gets the
caption and the voice), reads the transcript and hands back, all through the second
process; a second operator on the first process is refused while the first one holds it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import redis

from avatar.operator.accounts import OperatorAccounts
from avatar.store import Store
from tests.e2e.conftest import ServerProcess, start_server, stop_server
from tests.rtc_client import RtcCustomer
from tests.test_cluster import RedisServer, eventually

PASSWORD = "correct horse battery"


def add_operator(data_dir: Path, name: str) -> None:
    with Store.in_data_dir(data_dir) as store:
        OperatorAccounts(store).add(name, PASSWORD)


async def sign_in(http: aiohttp.ClientSession, server: ServerProcess, name: str) -> dict[str, str]:
    async with http.post(server.url + "/api/operator/login", json={"name": name, "password": PASSWORD}) as resp:
        assert resp.status == 200, await resp.text()
        return {"Authorization": f"Bearer {(await resp.json())['token']}"}


async def call(
    http: aiohttp.ClientSession, method: str, url: str, headers: dict[str, str], body: Any = None
) -> tuple[int, Any]:
    async with http.request(method, url, headers=headers, json=body) as resp:
        return resp.status, await resp.json()


class Desk:
    """An operator's event socket: collects every message."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.messages: list[dict[str, Any]] = []
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                self.messages.append(json.loads(msg.data))

    def has(self, predicate: Callable[[dict[str, Any]], bool]) -> bool:
        return any(predicate(m) for m in self.messages)

    async def close(self) -> None:
        await self.ws.close()
        await self.task


async def test_customer_on_one_process_operator_on_another(tmp_path: Path) -> None:
    redis_server = RedisServer(tmp_path / "redis")
    redis_server.start()
    servers: list[ServerProcess] = []
    customer: RtcCustomer | None = None
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
        add_operator(tmp_path / "b" / "data", "alice")  # signs in to B
        add_operator(tmp_path / "a" / "data", "bob")  # signs in to A
        env = {"AVATAR_REDIS_URL": redis_server.url}
        for name in ("a", "b"):  # one after the other: two starting at once on a loaded machine is slow
            servers.append(await asyncio.to_thread(start_server, tmp_path / name, env))
        a, b = servers
        async with aiohttp.ClientSession() as http:
            # The customer calls process A.
            customer = RtcCustomer()
            async with http.post(a.url + "/api/offer", json=await customer.offer()) as resp:
                assert resp.status == 200, await resp.text()
                answer = await resp.json()
            await customer.accept(answer)
            await asyncio.wait_for(customer.channel_open.wait(), 15)
            sid = answer["session_id"]

            # The operator signs in to process B and sees A's session there.
            alice = await sign_in(http, b, "alice")

            async def listed_on_b() -> bool:
                status, body = await call(http, "GET", b.url + "/api/operator/sessions", alice)
                return status == 200 and [s["session_id"] for s in body["sessions"]] == [sid]

            await eventually(listed_on_b)
            ws = await http.ws_connect(b.url + "/api/operator/ws", headers=alice)
            desk = Desk(ws)
            await eventually(lambda: desk.has(lambda m: m["type"] == "hello"))
            hello = next(m for m in desk.messages if m["type"] == "hello")
            assert [s["session_id"] for s in hello["sessions"]] == [sid] and hello["held"] == []

            # Events of A's session reach the desk on B: the AI (echo driver) answering.
            customer.send({"type": "text", "text": "Hello there"})
            await customer.wait_for_event(lambda e: e["type"] == "caption" and e["text"].startswith("Hello"))
            await eventually(
                lambda: desk.has(lambda m: m["type"] == "caption" and m.get("session_id") == sid), within=20
            )

            # Takeover through B: forwarded to A, which owns the session.
            status, body = await call(http, "POST", f"{b.url}/api/sessions/{sid}/takeover", alice)
            assert status == 200, body
            assert body["session"]["control"] == "operator" and body["session"]["holder"] == "alice"
            probe = redis.Redis.from_url(redis_server.url, decode_responses=True)
            try:
                assert probe.get(f"avatar:lock:{sid}") == "alice"
            finally:
                probe.close()
            await eventually(
                lambda: desk.has(lambda m: m["type"] == "event" and m["kind"] == "takeover" and m["session_id"] == sid)
            )
            status, body = await call(http, "GET", b.url + "/api/operator/sessions", alice)
            assert body["held"] == [sid]

            # A second operator, signed in to A itself, cannot take it.
            bob = await sign_in(http, a, "bob")
            status, body = await call(http, "POST", f"{a.url}/api/sessions/{sid}/takeover", bob)
            assert status == 409 and "alice" in body["error"]
            status, body = await call(http, "POST", f"{a.url}/api/sessions/{sid}/say", bob, {"text": "Hi"})
            assert status == 409

            # The operator's line, typed on B, is said on A: caption and voice reach the customer.
            line = "Your new card is on its way."
            status, body = await call(http, "POST", f"{b.url}/api/sessions/{sid}/say", alice, {"text": line})
            assert status == 200, body
            caption = await customer.wait_for_event(lambda e: e["type"] == "caption" and e["text"] == line, within=30)
            assert caption["speaker"] == "avatar" and caption["session_id"] == sid  # the customer cannot tell
            heard_from = len(customer.got.audio_rms)
            await eventually(lambda: max(customer.got.audio_rms[heard_from:], default=0.0) > 300, within=10)

            # A line to several sessions, sent on B, split by owner.
            multi = {"sessions": [sid], "text": "Anything else?"}
            status, body = await call(http, "POST", f"{b.url}/api/operator/say", alice, multi)
            assert status == 200 and body["sessions"] == [sid], body
            await customer.wait_for_event(lambda e: e["type"] == "caption" and e["text"] == "Anything else?")

            # The transcript, read on B, is A's: the operator's lines under their name.
            async def transcript_has_alice() -> bool:
                status, body = await call(http, "GET", f"{b.url}/api/sessions/{sid}/transcript", alice)
                return status == 200 and any(u["speaker"] == "alice" and u["text"] == line for u in body["transcript"])

            await eventually(transcript_has_alice, within=20)

            # Handback through B; the lock is released, so the operator on A may now take over.
            status, body = await call(http, "POST", f"{b.url}/api/sessions/{sid}/handback", alice)
            assert status == 200 and body["session"]["control"] == "ai", body
            status, body = await call(http, "POST", f"{a.url}/api/sessions/{sid}/takeover", bob)
            assert status == 200 and body["session"]["holder"] == "bob", body
            status, body = await call(http, "POST", f"{b.url}/api/sessions/{sid}/takeover", alice)
            assert status == 409 and "bob" in body["error"]
            status, _ = await call(http, "POST", f"{a.url}/api/sessions/{sid}/handback", bob)
            assert status == 200

            # The forwarding path is for peers only.
            forged = {**alice, "X-Avatar-Cluster": "guess"}
            status, body = await call(http, "POST", f"{a.url}/api/sessions/{sid}/takeover", forged)
            assert status == 403 and "error" in body

            # The call ends: the session leaves every process's list.
            await customer.close()
            customer = None

            async def gone_from_b() -> bool:
                status, body = await call(http, "GET", b.url + "/api/operator/sessions", alice)
                return status == 200 and body["sessions"] == []

            await eventually(gone_from_b, within=30)
            await eventually(lambda: desk.has(lambda m: m["type"] == "session_closed" and m["session_id"] == sid))
            await desk.close()
    finally:
        if customer is not None:
            await customer.close()
        for server in servers:
            await asyncio.to_thread(stop_server, server)
        redis_server.stop()
