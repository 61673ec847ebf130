"""Property-based fuzzing of the HTTP API against the real app: malformed JSON bodies on every
JSON route, mutated SDP offers, raw bytes. The properties: never a 500 (every error is a 4xx JSON
``{"error": ...}``), and afterwards the server still answers and no session is left behind.

Bounded: a few dozen examples per test, no deadline (the machine is shared), no example
database (a fresh clone behaves like CI)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from avatar.server.app import SESSIONS
from tests.conftest import API_TOKEN
from tests.fuzz_strategies import json_values, mutated_sdp, object_with
from tests.rtc_client import RtcCustomer
from tests.test_operator_api import sign_in
from tests.test_server import connect

FUZZ = settings(
    max_examples=40,
    deadline=None,
    database=None,
    # The app (a function-scoped fixture) is shared by the examples on purpose: the server must
    # stay well after each of them, which is part of what is checked.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

SAY_FIELDS = {"text": st.text(max_size=40), "interrupt": st.booleans(), "lang": st.sampled_from(["en", "zh", "xx"])}
OFFER_FIELDS = {
    "sdp": st.text(max_size=60) | st.just("v=0\r\n"),
    "type": st.sampled_from(["offer", "answer", "pranswer", ""]),
    "avatar": st.sampled_from(["anna", "leo", "nobody", "../etc", ""]),
    "mode": st.sampled_from(["call", "mirror", "broadcast", ""]),
}
LOGIN_FIELDS = {"name": st.text(max_size=20), "password": st.text(max_size=20)}
MULTI_SAY_FIELDS = {
    "text": st.text(max_size=30),
    "sessions": st.lists(st.text(max_size=16), max_size=3),
    "interrupt": st.booleans(),
}


async def expect_clean_error(resp: Any) -> None:
    """A fuzzed request gets a success or a 4xx with a JSON error message, never a 5xx."""
    body = await resp.read()
    assert resp.status < 500, (resp.status, body[:300])
    if resp.status >= 400:
        payload = json.loads(body)
        assert isinstance(payload.get("error"), str) and payload["error"], payload


async def still_serving(client: TestClient) -> None:  # type: ignore[type-arg]
    resp = await client.get("/healthz")
    assert resp.status == 200 and (await resp.json())["status"] == "ok"


@FUZZ
@given(body=json_values | object_with(OFFER_FIELDS) | object_with(SAY_FIELDS) | object_with(LOGIN_FIELDS))
async def test_json_routes_never_fail_with_5xx(
    client: TestClient, auth: dict[str, str], body: Any  # type: ignore[type-arg]
) -> None:
    raw = json.dumps(body)
    for method, path, headers in (
        ("POST", "/api/offer", {}),
        ("POST", "/api/sessions/nosuchsession/say", auth),
        ("POST", "/api/sessions/nosuchsession/interrupt", auth),
        ("POST", "/api/operator/login", {}),
        ("POST", "/api/operator/say", auth),
        ("POST", "/api/sessions/nosuchsession/takeover", auth),
    ):
        resp = await client.request(method, path, data=raw, headers={**headers, "Content-Type": "application/json"})
        await expect_clean_error(resp)
    # Whatever the fuzzer sent, a well-formed offer it accepted is closed again.
    await client.app[SESSIONS].close_all()
    await still_serving(client)


@FUZZ
@given(raw=st.binary(max_size=200) | st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")))
async def test_raw_bodies_are_refused_cleanly(client: TestClient, auth: dict[str, str], raw: bytes) -> None:  # type: ignore[type-arg]
    for path, headers in (("/api/offer", {}), ("/api/operator/login", {}), ("/api/sessions/x/say", auth)):
        resp = await client.post(path, data=raw, headers={**headers, "Content-Type": "application/json"})
        await expect_clean_error(resp)
    await client.app[SESSIONS].close_all()


_BASE_OFFER: dict[str, str] = {}


@settings(FUZZ, max_examples=30)
@given(data=st.data())
async def test_mutated_sdp_offers(client: TestClient, data: st.DataObject) -> None:  # type: ignore[type-arg]
    # One real offer for every example: hypothesis needs the same base to replay and shrink a case.
    if not _BASE_OFFER:
        customer = RtcCustomer()
        try:
            _BASE_OFFER.update(await customer.offer())
        finally:
            await customer.close()
    sdp = data.draw(mutated_sdp(_BASE_OFFER["sdp"]))
    resp = await client.post("/api/offer", json={"sdp": sdp, "type": "offer"})
    await expect_clean_error(resp)
    # The same offer from a viewer of a broadcast stage (its own answering path, same rules).
    api = {"Authorization": f"Bearer {API_TOKEN}"}
    created = await client.post("/api/stages", json={}, headers=api)
    assert created.status == 201, await created.text()
    stage = await created.json()
    resp = await client.post(
        f"/api/stages/{stage['stage_id']}/offer", json={"sdp": sdp, "type": "offer", "key": stage["view_key"]}
    )
    await expect_clean_error(resp)
    assert (await client.delete(f"/api/stages/{stage['stage_id']}", headers=api)).status == 200
    manager = client.app[SESSIONS]
    await manager.close_all()
    assert not manager.sessions and manager._pending == 0  # nothing half-made is left counting
    await still_serving(client)


async def test_an_offer_that_leaves_a_section_without_transport(client: TestClient) -> None:  # type: ignore[type-arg]
    """Found by the SDP fuzzer: the video section's ``a=mid`` moved into the audio section. aiortc
    applies it, then fails inside ``createAnswer`` and again inside ``close`` (a transceiver with
    no transport). The answer is a 400, and the half-made session does not keep a place: the
    server is not "full" afterwards."""
    customer = RtcCustomer()
    try:
        lines = (await customer.offer())["sdp"].strip().split("\r\n")
    finally:
        await customer.close()
    video_mid = next(i for i, line in enumerate(lines) if line.startswith("m=video"))
    video_mid = next(i for i in range(video_mid, len(lines)) if lines[i].startswith("a=mid:"))
    audio_rtcp = next(i for i, line in enumerate(lines) if line.startswith("a=rtcp:"))
    lines[audio_rtcp], lines[video_mid] = lines[video_mid], lines[audio_rtcp]
    broken = "\r\n".join(lines) + "\r\n"
    api = {"Authorization": f"Bearer {API_TOKEN}"}
    stage = await (await client.post("/api/stages", json={}, headers=api)).json()
    for path, body in (
        ("/api/offer", {"sdp": broken, "type": "offer"}),
        (f"/api/stages/{stage['stage_id']}/offer", {"sdp": broken, "type": "offer", "key": stage["view_key"]}),
    ):
        for _ in range(4):  # more than max_sessions (3): a leaked place would show as a 503
            resp = await client.post(path, json=body)
            assert resp.status == 400, await resp.text()
            assert "cannot answer" in (await resp.json())["error"]
    assert client.app[SESSIONS]._pending == 0
    connected, _ = await connect(client)  # still room for a real customer
    await connected.close()


@pytest.fixture
async def held(client: TestClient) -> AsyncIterator[tuple[dict[str, str], str]]:  # type: ignore[type-arg]
    """A live customer session held by a signed-in operator: (operator headers, session id)."""
    operator = await sign_in(client, "fuzz")
    customer, sid = await connect(client)
    try:
        resp = await client.post(f"/api/sessions/{sid}/takeover", headers=operator)
        assert resp.status == 200, await resp.text()
        yield operator, sid
    finally:
        await customer.close()


@FUZZ
@given(body=object_with(MULTI_SAY_FIELDS) | json_values, text=st.text(max_size=30))
async def test_operator_routes_with_a_held_session(
    client: TestClient, held: tuple[dict[str, str], str], body: Any, text: str  # type: ignore[type-arg]
) -> None:
    """Fuzzed bodies on the routes an operator uses while holding a live session."""
    operator, sid = held
    for path, payload in (
        ("/api/operator/say", body),
        (f"/api/sessions/{sid}/say", body),
        (f"/api/sessions/{sid}/say", {"text": text}),
    ):
        resp = await client.post(path, data=json.dumps(payload), headers=operator)
        await expect_clean_error(resp)
    client.app[SESSIONS].get(sid).interrupt()  # type: ignore[union-attr]  # keep the queue short
    resp = await client.post(f"/api/sessions/{sid}/interrupt", headers={"Authorization": "Bearer nope"})
    await expect_clean_error(resp)
    await still_serving(client)


WS_MESSAGES = st.one_of(
    st.text(max_size=80),
    json_values.map(json.dumps),
    object_with({"type": st.sampled_from(["ping", "auth", "say", "", "takeover"]), "token": st.text()}).map(json.dumps),
)


@settings(FUZZ, max_examples=15)
@given(samples=st.lists(WS_MESSAGES, min_size=1, max_size=20), junk=st.binary(max_size=40))
async def test_operator_socket_survives_fuzzed_messages(
    client: TestClient, samples: list[str], junk: bytes  # type: ignore[type-arg]
) -> None:
    """The event socket answers any junk with an error message and keeps serving."""
    operator = await sign_in(client, "fuzzws")
    async with client.ws_connect("/api/operator/ws", headers=operator) as ws:
        hello = await ws.receive_json(timeout=10)
        assert hello["type"] == "hello"
        for sample in samples:
            await ws.send_str(sample)
        await ws.send_bytes(junk)
        with contextlib.suppress(TimeoutError):
            while True:  # every reply to the junk is a JSON event; drain them
                msg = await ws.receive_json(timeout=0.3)
                assert isinstance(msg, dict) and isinstance(msg.get("type"), str), msg
        await ws.send_str(json.dumps({"type": "ping"}))
        while (msg := await ws.receive_json(timeout=10))["type"] != "pong":
            assert msg["type"] != "error", msg  # a well-formed ping is not an error
