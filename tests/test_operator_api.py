"""The operator API against the real app with in-process aiortc customers: sign-in and its
failures, takeover/handback/say, two operators, one operator holding several sessions,
the grace period after a disconnect (fake sleep), and the event socket."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp.test_utils import TestClient

from avatar.operator.service import OperatorService
from avatar.server.app import SESSIONS
from avatar.server.operator_routes import OPERATORS
from tests.test_server import connect

PASSWORD = "correct horse battery"


def ops(client: TestClient) -> OperatorService:  # type: ignore[type-arg]
    return client.app[OPERATORS]


async def sign_in(client: TestClient, name: str) -> dict[str, str]:  # type: ignore[type-arg]
    if ops(client).store.operator(name) is None:
        await asyncio.to_thread(ops(client).accounts.add, name, PASSWORD)
    resp = await client.post("/api/operator/login", json={"name": name, "password": PASSWORD})
    assert resp.status == 200, await resp.text()
    return {"Authorization": f"Bearer {(await resp.json())['token']}"}


async def wait_until(predicate: Callable[[], bool], within: float = 10.0) -> None:
    """Poll ``predicate`` (state changed by other tasks) until it holds; fail after ``within`` s."""
    for _ in range(int(within / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"condition not met within {within} s")


async def test_auth_failures(client: TestClient, auth: dict[str, str]) -> None:  # type: ignore[type-arg]
    customer, sid = await connect(client)
    try:
        # No token, a wrong token, the session id as a token (all a customer's page has).
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Bearer {sid}"}):
            for method, path in (
                ("GET", "/api/operator/sessions"),
                ("POST", f"/api/sessions/{sid}/takeover"),
                ("POST", f"/api/sessions/{sid}/handback"),
                ("GET", f"/api/sessions/{sid}/transcript"),
                ("POST", "/api/operator/logout"),
            ):
                resp = await client.request(method, path, headers=headers)
                assert resp.status == 401, (method, path, headers, await resp.text())
                assert "error" in await resp.json()
        # The integration token is not an operator: it may read transcripts, not take over.
        as_api = await client.post(f"/api/sessions/{sid}/takeover", headers=auth)
        assert as_api.status == 401 and "not the API token" in (await as_api.json())["error"]
        assert (await client.get(f"/api/sessions/{sid}/transcript", headers=auth)).status == 200

        # Wrong password, unknown name, bad body.
        await asyncio.to_thread(ops(client).accounts.add, "alice", PASSWORD)
        bad = await client.post("/api/operator/login", json={"name": "alice", "password": "wrong password"})
        assert bad.status == 401 and (await bad.json())["error"] == "wrong name or password"
        unknown = await client.post("/api/operator/login", json={"name": "mallory", "password": PASSWORD})
        assert unknown.status == 401 and (await unknown.json())["error"] == "wrong name or password"
        assert (await client.post("/api/operator/login", json={"name": "alice"})).status == 400

        # Expired token: move the token book's clock past the lifetime.
        headers = await sign_in(client, "alice")
        assert (await client.get("/api/operator/sessions", headers=headers)).status == 200
        book = ops(client).tokens
        now = book.clock()
        book.clock = lambda: now + book.ttl + 1
        expired = await client.get("/api/operator/sessions", headers=headers)
        assert expired.status == 401 and "expired" in (await expired.json())["error"]

        # Logout revokes.
        book.clock = lambda: now
        headers = await sign_in(client, "alice")
        assert (await client.post("/api/operator/logout", headers=headers)).status == 200
        assert (await client.get("/api/operator/sessions", headers=headers)).status == 401
        kinds = [e.kind for e in ops(client).store.events()]
        assert kinds.count("login_failed") == 2 and "login" in kinds and "logout" in kinds
    finally:
        await customer.close()


async def test_failed_logins_are_rate_limited(client: TestClient) -> None:  # type: ignore[type-arg]
    await asyncio.to_thread(ops(client).accounts.add, "bob", PASSWORD)
    limiter = ops(client).limiter
    for _ in range(limiter.max_failures):
        resp = await client.post("/api/operator/login", json={"name": "bob", "password": "guess-guess"})
        assert resp.status == 401
    blocked = await client.post("/api/operator/login", json={"name": "bob", "password": PASSWORD})
    assert blocked.status == 429 and int(blocked.headers["Retry-After"]) > 0
    # Another name from the same address is blocked too (per-address limit).
    other = await client.post("/api/operator/login", json={"name": "carol", "password": PASSWORD})
    assert other.status == 429


async def test_takeover_say_handback_and_transcript(client: TestClient) -> None:  # type: ignore[type-arg]
    customer, sid = await connect(client)
    alice = await sign_in(client, "alice")
    try:
        listed = await (await client.get("/api/operator/sessions", headers=alice)).json()
        assert [s["session_id"] for s in listed["sessions"]] == [sid]
        assert listed["sessions"][0]["control"] == "ai"

        # The AI (echo driver) answers before the takeover.
        customer.send({"type": "text", "text": "Hello there"})
        await customer.wait_for_event(lambda e: e["type"] == "caption" and e["text"].startswith("Hello"))
        session = client.app[SESSIONS].get(sid)
        assert session is not None
        await wait_until(lambda: any(e.speaker == "ai" for e in session.transcript))  # said in full

        resp = await client.post(f"/api/sessions/{sid}/takeover", headers=alice)
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["session"] == {**(await resp.json())["session"], "control": "operator", "holder": "alice"}
        # Taking over twice is harmless for the holder.
        assert (await client.post(f"/api/sessions/{sid}/takeover", headers=alice)).status == 200

        # While the operator holds the session the AI does not answer.
        captions_before = sum(1 for e in customer.got.events if e["type"] == "caption")
        customer.send({"type": "text", "text": "Is anyone there"})
        await wait_until(lambda: any(e.text == "Is anyone there" for e in session.transcript))

        # The operator's line is spoken in the avatar's voice on the customer's stream.
        resp = await client.post(f"/api/sessions/{sid}/say", json={"text": "Good morning, this is Alice."}, headers=alice)
        assert resp.status == 200, await resp.text()
        caption = await customer.wait_for_event(lambda e: e["type"] == "caption" and e["text"].startswith("Good morning"))
        assert sum(1 for e in customer.got.events if e["type"] == "caption") == captions_before + 1
        assert caption["text"].startswith("Good morning")
        await wait_until(lambda: any(e.speaker == "alice" for e in session.transcript))

        resp = await client.post(f"/api/sessions/{sid}/handback", headers=alice)
        assert resp.status == 200 and (await resp.json())["session"]["control"] == "ai"
        customer.send({"type": "text", "text": "Back to you robot"})
        await customer.wait_for_event(lambda e: e["type"] == "caption" and e["text"].startswith("Back to you"))
        await wait_until(lambda: sum(1 for e in session.transcript if e.speaker == "ai") >= 2)

        body = await (await client.get(f"/api/sessions/{sid}/transcript", headers=alice)).json()
        who = [(u["speaker"], u["text"]) for u in body["utterances"]]
        assert who[:2] == [("customer", "Hello there"), ("ai", "Hello there")]
        assert ("customer", "Is anyone there") in who
        assert ("alice", "Good morning, this is Alice.") in who
        assert who.index(("alice", "Good morning, this is Alice.")) < who.index(("customer", "Back to you robot"))
        assert ("ai", "Back to you robot") in who
        assert [e["kind"] for e in body["events"]] == ["takeover", "handback"]
        assert all(e["operator"] == "alice" for e in body["events"])
    finally:
        await customer.close()


async def test_two_operators_conflict(client: TestClient) -> None:  # type: ignore[type-arg]
    customer, sid = await connect(client)
    alice = await sign_in(client, "alice")
    bob = await sign_in(client, "bob")
    try:
        assert (await client.post(f"/api/sessions/{sid}/takeover", headers=alice)).status == 200
        second = await client.post(f"/api/sessions/{sid}/takeover", headers=bob)
        assert second.status == 409
        assert "alice" in (await second.json())["error"]
        assert (await client.post(f"/api/sessions/{sid}/say", json={"text": "hi"}, headers=bob)).status == 409
        assert (await client.post(f"/api/sessions/{sid}/handback", headers=bob)).status == 409
        assert (await client.post("/api/operator/say", json={"sessions": [sid], "text": "hi"}, headers=bob)).status == 409
        assert (await client.post("/api/sessions/nope/takeover", headers=bob)).status == 404
        # Once alice hands back, bob may take it.
        assert (await client.post(f"/api/sessions/{sid}/handback", headers=alice)).status == 200
        assert (await client.post(f"/api/sessions/{sid}/takeover", headers=bob)).status == 200
    finally:
        await customer.close()


async def test_one_operator_holds_several_sessions(client: TestClient) -> None:  # type: ignore[type-arg]
    first, sid1 = await connect(client)
    second, sid2 = await connect(client, avatar="leo")
    alice = await sign_in(client, "alice")
    try:
        for sid in (sid1, sid2):
            assert (await client.post(f"/api/sessions/{sid}/takeover", headers=alice)).status == 200
        listed = await (await client.get("/api/operator/sessions", headers=alice)).json()
        assert sorted(listed["held"]) == sorted([sid1, sid2])
        resp = await client.post(
            "/api/operator/say", json={"sessions": [sid1, sid2], "text": "Thank you for waiting."}, headers=alice
        )
        assert resp.status == 200, await resp.text()
        for customer in (first, second):
            await customer.wait_for_event(lambda e: e["type"] == "caption" and e["text"].startswith("Thank you"))
        store = ops(client).store
        await wait_until(lambda: all(any(u.speaker == "alice" for u in store.transcript(s)) for s in (sid1, sid2)))
        bad = await client.post("/api/operator/say", json={"sessions": [], "text": "x"}, headers=alice)
        assert bad.status == 400
        # One customer's connection is lost (avatar.rtc.link): all or nothing, so nothing is said.
        lost = ops(client).desk.seats[sid2].session
        lost.lose_link(lost.stage.clock.time())
        resp = await client.post("/api/operator/say", json={"sessions": [sid1, sid2], "text": "Hello?"}, headers=alice)
        assert resp.status == 409 and sid2 in await resp.text() and "connection is lost" in await resp.text()
        lost.link_back()
        # Logging out hands every held session back to the AI.
        out = await (await client.post("/api/operator/logout", headers=alice)).json()
        assert sorted(out["released"]) == sorted([sid1, sid2])
        assert all(seat.control.value == "ai" for seat in ops(client).desk.seats.values())
    finally:
        await first.close()
        await second.close()


async def test_disconnect_grace_period_and_event_socket(client: TestClient) -> None:  # type: ignore[type-arg]
    desk = ops(client).desk
    gate = asyncio.Event()

    async def fake_sleep(seconds: float) -> None:
        await gate.wait()

    desk.sleep = fake_sleep
    customer, sid = await connect(client)
    alice = await sign_in(client, "alice")
    token = alice["Authorization"].split()[1]
    try:
        # A socket with no token is refused with code 4401.
        anon = await client.ws_connect("/api/operator/ws")
        await anon.send_json({"type": "auth", "token": "nope"})
        refused = await anon.receive_json()
        assert refused["type"] == "error"
        await anon.receive()
        assert anon.close_code == 4401

        ws = await client.ws_connect("/api/operator/ws")
        await ws.send_json({"type": "auth", "token": token})
        hello = await ws.receive_json()
        assert hello["type"] == "hello" and hello["operator"] == "alice"
        assert [s["session_id"] for s in hello["sessions"]] == [sid]
        await ws.send_json({"type": "ping"})
        messages = await collect_until(ws, lambda m: m["type"] == "pong")

        assert (await client.post(f"/api/sessions/{sid}/takeover", headers=alice)).status == 200
        messages = await collect_until(ws, lambda m: m["type"] == "event" and m["kind"] == "takeover")
        customer.send({"type": "text", "text": "Can you hear me"})
        utterance = (await collect_until(ws, lambda m: m["type"] == "utterance"))[-1]
        assert (utterance["speaker"], utterance["text"], utterance["session_id"]) == ("customer", "Can you hear me", sid)
        assert messages

        # The panel goes away: the session stays with alice until the grace period ends...
        await ws.close()
        seat = desk.seats[sid]
        await wait_until(lambda: seat.grace is not None)
        assert seat.holder == "alice"
        # ...and a reconnect inside the grace period keeps it.
        ws = await client.ws_connect("/api/operator/ws", headers=alice)
        assert (await ws.receive_json())["held"] == [sid]
        await wait_until(lambda: seat.grace is None)
        await ws.close()
        await wait_until(lambda: seat.grace is not None)
        gate.set()  # the grace period passes
        await wait_until(lambda: seat.holder is None)
        assert seat.control.value == "ai"
        store = ops(client).store
        await wait_until(lambda: store.events(sid)[-1].kind == "handback")
        assert store.events(sid)[-1].detail == {"reason": "grace_expired"}
    finally:
        await customer.close()


async def collect_until(ws: Any, predicate: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []

    async def read() -> list[dict[str, Any]]:
        while True:
            message = await ws.receive_json()
            got.append(message)
            if predicate(message):
                return got

    return await asyncio.wait_for(read(), 15)



class HandoffDriver:
    """A stand-in for the brain: asks for a human when the customer does, else echoes."""

    name = "brain"

    async def on_customer_text(self, session: Any, text: str) -> None:
        if "human" in text:
            session.say("I will find a colleague for you.")
            session.request_handoff("customer asked for a human")
        else:
            session.say(text)


async def test_handoff_request_alerts_operators_and_holds_the_customer(client: TestClient) -> None:  # type: ignore[type-arg]
    client.app[SESSIONS].driver_factory = HandoffDriver
    desk = ops(client).desk
    customer, sid = await connect(client)
    alice = await sign_in(client, "alice")
    try:
        ws = await client.ws_connect("/api/operator/ws", headers=alice)
        assert (await ws.receive_json())["type"] == "hello"
        customer.send({"type": "text", "text": "I want a human please"})
        alert = (await collect_until(ws, lambda m: m["type"] == "alert"))[-1]
        assert (alert["session_id"], alert["reason"]) == (sid, "customer asked for a human")
        assert desk.summary(sid)["control"] == "waiting" and desk.summary(sid)["waited"] is not None
        # The customer hears the holding line, and again when they speak while waiting.
        holding = desk.holding_line
        await customer.wait_for_event(lambda e: e["type"] == "caption" and holding.startswith(e["text"]))
        customer.send({"type": "text", "text": "hello?"})
        session = client.app[SESSIONS].get(sid)
        assert session is not None
        await wait_until(lambda: sum(1 for e in session.transcript if e.text == holding) >= 2, within=30)
        assert not any(e.speaker == "ai" and e.text == "hello?" for e in session.transcript)  # not echoed
        assert desk.summaries()[0]["session_id"] == sid  # waiting sessions come first

        assert (await client.post(f"/api/sessions/{sid}/takeover", headers=alice)).status == 200
        events = ops(client).store.events(sid)
        assert [e.kind for e in events] == ["handoff_request", "takeover"]
        assert events[1].detail is not None and events[1].detail["waited"] >= 0
        assert (await client.post(f"/api/sessions/{sid}/handback", headers=alice)).status == 200
        customer.send({"type": "text", "text": "Echo me"})
        await customer.wait_for_event(lambda e: e["type"] == "caption" and e["text"].startswith("Echo me"))
        assert session.handoff_reason is None
        await ws.close()
    finally:
        await customer.close()


def test_control_transitions_are_checked() -> None:
    from avatar.operator.takeover import ALLOWED, Control, Seat, TransitionError

    seat = Seat(session=None, ai_driver=None)  # type: ignore[arg-type]
    seat.move(Control.WAITING)
    seat.move(Control.OPERATOR)
    try:
        seat.move(Control.WAITING)
    except TransitionError as exc:
        assert "operator" in str(exc) and "waiting" in str(exc)
    else:
        raise AssertionError("operator -> waiting must be refused")
    seat.move(Control.AI)
    assert ALLOWED[Control.OPERATOR] == {Control.AI}
