"""Live comments and show scripts through the real app: auth on every route, bad input,
moderation answers, queue order, operator pick/skip/answer, a comment answered on air with the
viewer's name spoken (real TTS), a script started by name and stopped, the operators' socket
told about the queue; and the in-memory queue's contract."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.test_utils import TestClient

from avatar.broadcast.comments import Comment, CommentIds, MemoryCommentQueue, make_comment, question_line
from avatar.broadcast.show_routes import SHOWS
from tests.test_operator_api import sign_in, wait_until


async def new_stage(client: TestClient, auth: dict[str, str], driver: str = "brain") -> str:  # type: ignore[type-arg]
    resp = await client.post("/api/stages", json={"driver": driver}, headers=auth)
    assert resp.status == 201, await resp.text()
    return str((await resp.json())["stage_id"])


def show_of(client: TestClient, stage_id: str) -> Any:  # type: ignore[type-arg]
    return client.app[SHOWS].stages[stage_id].show


# -- the queue ------------------------------------------------------------------------------------------
async def test_memory_queue_contract() -> None:
    queue = MemoryCommentQueue(limit=3)
    comments = [Comment(id=f"c{i}", user="u", text=f"t{i}", lang="en") for i in range(4)]
    assert [await queue.push(c) for c in comments] == [1, 2, 3, None]  # positions; full at 3
    assert [c.id for c in await queue.list()] == ["c0", "c1", "c2"]
    assert await queue.remove("c1") is comments[1] and await queue.remove("c1") is None
    assert await queue.pop() is comments[0] and await queue.pop() is comments[2] and await queue.pop() is None
    assert await queue.list() == []
    await queue.push(comments[3])
    await queue.clear()
    assert await queue.list() == []
    # Ids from a shared counter: unique across the queues of one process.
    ids = CommentIds()
    first, second = MemoryCommentQueue(ids=ids), MemoryCommentQueue(ids=ids)
    assert [await first.next_id(), await second.next_id(), await first.next_id()] == ["c1", "c2", "c3"]


def test_comment_round_trips_through_a_dict() -> None:
    comment = make_comment("c7", "小王", "可以分期吗？")
    assert Comment.from_dict(comment.to_dict()) == comment


def test_question_line_speaks_the_name_in_the_comments_language() -> None:
    assert question_line(make_comment("c1", " Li Wei ", "What is the  annual fee")) == "Li Wei asks: What is the annual fee?"
    assert question_line(make_comment("c2", "小王", "信用卡年费是多少？")) == "小王问：信用卡年费是多少？"


# -- auth and bad input ------------------------------------------------------------------------------------
async def test_auth_on_every_route(client: TestClient, auth: dict[str, str]) -> None:  # type: ignore[type-arg]
    stage_id = await new_stage(client, auth)
    base = f"/api/stages/{stage_id}"
    manager_routes = [
        ("POST", f"{base}/comments", {"user": "a", "text": "hi"}),
        ("GET", f"{base}/comments", None),
        ("POST", f"{base}/script", {"script": "card-launch"}),
        ("GET", f"{base}/script", None),
        ("POST", f"{base}/script/pause", None),
        ("POST", f"{base}/script/resume", None),
        ("DELETE", f"{base}/script", None),
        ("POST", f"{base}/outputs", {"url": "rtmp://127.0.0.1:1/live/x"}),
        ("GET", f"{base}/outputs", None),
        ("DELETE", f"{base}/outputs/nothing", None),
    ]
    operator_routes = [
        ("POST", f"{base}/comments/c1/pick", None),
        ("POST", f"{base}/comments/c1/skip", None),
        ("POST", f"{base}/comments/c1/answer", {"text": "hello"}),
    ]
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {stage_id}"}):
        for method, path, body in manager_routes + operator_routes:
            resp = await client.request(method, path, json=body, headers=headers)
            assert resp.status == 401, (method, path, headers, await resp.text())
            assert "error" in await resp.json()
    # The integration token manages but is not an operator: pick/skip/answer need a person.
    for method, path, body in operator_routes:
        resp = await client.request(method, path, json=body, headers=auth)
        assert resp.status == 401, (method, path)
    # An operator may do all of it.
    operator = await sign_in(client, "olga")
    resp = await client.get(f"{base}/comments", headers=operator)
    assert resp.status == 200
    resp = await client.post(f"{base}/comments", json={"user": "a", "text": "first question"}, headers=operator)
    assert resp.status == 202
    show = show_of(client, stage_id)
    assert await show.waiting() or show.on_air  # nothing consumed it yet or it is on air
    # Unknown stage: 404 with a message, once authorised.
    resp = await client.get("/api/stages/nope/comments", headers=auth)
    assert resp.status == 404 and "nope" in (await resp.json())["error"]


async def test_bad_input(client: TestClient, auth: dict[str, str]) -> None:  # type: ignore[type-arg]
    stage_id = await new_stage(client, auth, driver="operator")
    url = f"/api/stages/{stage_id}/comments"
    cases: list[tuple[Any, str]] = [
        (b"{not json", "malformed JSON"),
        (b"[1]", "JSON object"),
        ({"text": "hi"}, "'user' must be a non-empty string"),
        ({"user": "a", "text": "   "}, "'text' must be a non-empty string"),
        ({"user": "a", "text": 5}, "'text' must be a non-empty string"),
        ({"user": "a" * 65, "text": "hi"}, "'user' is longer than 64"),
        ({"user": "a", "text": "x" * 501}, "'text' is longer than 500"),
    ]
    for body, message in cases:
        kwargs: dict[str, Any] = {"data": body, "headers": {**auth, "Content-Type": "application/json"}}
        if not isinstance(body, bytes):
            kwargs = {"json": body, "headers": auth}
        resp = await client.post(url, **kwargs)
        assert resp.status == 400, body
        assert message in (await resp.json())["error"], body
    script = f"/api/stages/{stage_id}/script"
    resp = await client.post(script, json={"script": ""}, headers=auth)
    assert resp.status == 400 and "'script'" in (await resp.json())["error"]
    resp = await client.post(script, json={"script": "lines:\n  - say: hi\n  - pause: -1\n"}, headers=auth)
    body = await resp.json()
    assert resp.status == 400 and body["problems"] == ["line 3, lines[1].pause: must be a number of seconds from 0 to 600"]
    resp = await client.post(script, json={"script": "no-such-show"}, headers=auth)
    assert resp.status == 400 and "no shipped show 'no-such-show'" in (await resp.json())["error"]
    assert (await client.delete(script, headers=auth)).status == 404  # nothing playing
    assert (await client.post(f"{script}/resume", headers=auth)).status == 409
    outputs = f"/api/stages/{stage_id}/outputs"
    for body, message in [
        ({}, "'url' must be a non-empty string"),
        ({"url": "http://example.com/live/x"}, "rtmp://"),
        ({"url": "rtmp:///live/x"}, "no host"),
        ({"url": "rtmp://host/onlyapp"}, "stream key"),
    ]:
        resp = await client.post(outputs, json=body, headers=auth)
        assert resp.status == 400 and message in (await resp.json())["error"], body
    operator = await sign_in(client, "olga")
    resp = await client.post(f"/api/stages/{stage_id}/comments/c999/pick", headers=operator)
    assert resp.status == 404 and "c999" in (await resp.json())["error"]
    resp = await client.post(f"/api/stages/{stage_id}/comments/c999/answer", json={}, headers=operator)
    assert resp.status == 400


# -- moderation answers, queue order and operator actions ----------------------------------------------------
async def test_moderation_answers_and_operator_actions(client: TestClient, auth: dict[str, str]) -> None:  # type: ignore[type-arg]
    # An operator-driven stage: the brain answers nothing, so the queue stays as posted.
    stage_id = await new_stage(client, auth, driver="operator")
    url = f"/api/stages/{stage_id}/comments"
    rejected = await client.post(url, json={"user": "troll", "text": "you idiot"}, headers=auth)
    assert rejected.status == 200
    assert await rejected.json() == {"queued": False, "reason": "abuse", "message": "abusive language"}
    pii = await (await client.post(url, json={"user": "bo", "text": "我的手机号13912345678"}, headers=auth)).json()
    assert pii["queued"] is False and pii["reason"] == "personal_data"
    ids = []
    for i, (user, text) in enumerate([("Li Wei", "What is the annual fee?"), ("小王", "可以分期吗？"), ("Ann", "Hi!")]):
        resp = await client.post(url, json={"user": user, "text": text}, headers=auth)
        assert resp.status == 202
        body = await resp.json()
        assert body["queued"] is True and body["position"] == i + 1
        ids.append(body["comment"]["id"])
    assert (await (await client.post(url, json={"user": "Ann", "text": "hi"}, headers=auth)).json())["reason"] == "repeated"
    listed = await (await client.get(url, headers=auth)).json()
    assert [c["id"] for c in listed["comments"]] == ids
    assert listed["comments"][1]["lang"] == "zh"

    operator = await sign_in(client, "olga")
    # Pick the last one: it moves to the front.
    resp = await client.post(f"{url}/{ids[2]}/pick", headers=operator)
    assert resp.status == 200 and (await resp.json())["status"] == "next"
    listed = await (await client.get(url, headers=auth)).json()
    assert [c["id"] for c in listed["comments"]] == [ids[2], ids[0], ids[1]]
    # Skip one.
    resp = await client.post(f"{url}/{ids[1]}/skip", headers=operator)
    assert resp.status == 200
    listed = await (await client.get(url, headers=auth)).json()
    assert [c["id"] for c in listed["comments"]] == [ids[2], ids[0]]
    assert listed["history"][0]["id"] == ids[1] and listed["history"][0]["status"] == "skipped"
    assert listed["history"][0]["by"] == "olga"
    # Answer by hand: the question and the operator's words, in the avatar's voice.
    resp = await client.post(f"{url}/{ids[0]}/answer", json={"text": "It is free in the first year."}, headers=operator)
    assert resp.status == 200 and (await resp.json())["status"] == "answering"
    show = show_of(client, stage_id)
    await wait_until(lambda: bool(show.history) and show.history[0]["id"] == ids[0], within=60)
    assert show.history[0]["status"] == "answered" and show.history[0]["by"] == "olga"
    said = [(e.speaker, e.text) for e in show.session.transcript]
    assert ("olga", "Li Wei asks: What is the annual fee?") in said
    assert ("olga", "It is free in the first year.") in said
    # The picked comment is still waiting: on an operator-driven stage nothing answers it by itself.
    assert [c.id for c in await show.waiting()] == [ids[2]]


async def test_comment_answered_on_air_and_operators_told(client: TestClient, auth: dict[str, str]) -> None:  # type: ignore[type-arg]
    from avatar.server.operator_routes import OPERATORS

    stage_id = await new_stage(client, auth)  # the configured answerer: echo in these tests
    operator = await sign_in(client, "olga")
    async with client.ws_connect("/api/operator/ws", headers=operator) as ws:
        assert (await ws.receive_json(timeout=10))["type"] == "hello"
        resp = await client.post(
            f"/api/stages/{stage_id}/comments", json={"user": "Li Wei", "text": "Hello from Shanghai"}, headers=auth
        )
        assert resp.status == 202
        seen = []
        while True:
            message = await ws.receive_json(timeout=30)
            if message["type"] == "comments":
                seen.append(message)
                if message["history"] and message["history"][0]["status"] == "answered":
                    break
        # The panel is told the programme as it is when told (a brain stage may have the comment
        # on air already): the first telling shows it waiting or on air.
        first = seen[0]
        shown = first["comments"][:1] + ([first["on_air"]["comment"]] if first["on_air"] else [])
        assert first["stage_id"] == stage_id and shown[0]["user"] == "Li Wei"
        assert any(m["on_air"] and m["on_air"]["kind"] == "comment" for m in seen)
    show = show_of(client, stage_id)
    said = [e.text for e in show.session.transcript]
    assert said[:2] == ["Li Wei asks: Hello from Shanghai?", "Hello from Shanghai"]
    assert client.app[OPERATORS].hub is not None


async def test_script_by_name_plays_and_stops(client: TestClient, auth: dict[str, str]) -> None:  # type: ignore[type-arg]
    stage_id = await new_stage(client, auth, driver="script")
    url = f"/api/stages/{stage_id}/script"
    resp = await client.post(url, json={"script": "card-launch"}, headers=auth)
    assert resp.status == 200
    body = await resp.json()
    assert body["state"] == "playing" and body["name"] == "card-launch" and body["steps"] >= 3
    show = show_of(client, stage_id)
    await wait_until(lambda: show.position >= 1, within=60)  # the first line has been said
    assert show.session.transcript[0].text.startswith("Good evening")
    paused = await (await client.post(f"{url}/pause", headers=auth)).json()
    assert paused["state"] == "paused" and paused["reason"] == "operator"
    assert (await (await client.post(f"{url}/resume", headers=auth)).json())["state"] == "playing"
    stopped = await client.delete(url, headers=auth)
    assert stopped.status == 200 and (await stopped.json())["state"] == "stopped"
    assert (await (await client.get(url, headers=auth)).json())["state"] == "stopped"
    await asyncio.sleep(0)  # let the show see the stop
