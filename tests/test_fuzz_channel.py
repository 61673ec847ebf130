"""Property-based fuzzing of the customer's ``events`` data channel, through a real aiortc peer:
any text or bytes a page (or an attacker with a page) sends gets an ``error`` event or is obeyed,
never kills the session; afterwards the session still answers and closes within its bound."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from avatar.server.app import SESSIONS
from avatar.session import CLOSE_TIMEOUT
from tests.fuzz_strategies import json_values, object_with
from tests.rtc_client import RtcCustomer
from tests.test_server import connect

MESSAGES = st.one_of(
    st.text(max_size=120),
    st.binary(max_size=64),
    json_values.map(json.dumps),
    object_with({"type": st.sampled_from(["text", "ping", "say", "", "interrupt"]), "text": st.text(max_size=50)}).map(
        json.dumps
    ),
    st.just(json.dumps({"type": "text", "text": "x" * 1200})),
)


@pytest.fixture
async def live(client: TestClient) -> AsyncIterator[tuple[RtcCustomer, str]]:  # type: ignore[type-arg]
    customer, sid = await connect(client)
    try:
        yield customer, sid
    finally:
        await customer.close()


async def pong(customer: RtcCustomer) -> None:
    """Ping until a pong comes back after the first ping (earlier pongs look the same). The
    channel's rate limit may drop a ping sent right after a flood; a repeat a second later is
    let through once the bucket refills."""
    marker = len(customer.got.events)
    for attempt in range(1500):
        if attempt % 50 == 0:
            customer.send({"type": "ping"})
        if any(e.get("type") == "pong" for e in customer.got.events[marker:]):
            return
        await asyncio.sleep(0.02)
    raise AssertionError("no pong within 30 s")


@settings(max_examples=15, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(batch=st.lists(MESSAGES, min_size=1, max_size=8))
async def test_fuzzed_channel_messages(
    client: TestClient, live: tuple[RtcCustomer, str], batch: list[str | bytes]  # type: ignore[type-arg]
) -> None:
    customer, sid = live
    for message in batch:
        customer.channel.send(message)
    await pong(customer)  # still answering, after everything that came before
    session = client.app[SESSIONS].get(sid)
    assert session is not None and not session.closed.is_set()
    errors = [e for e in customer.got.events if e.get("type") == "error"]
    assert all(isinstance(e.get("message"), str) and e["message"] for e in errors)
    session.interrupt()  # echoed lines would otherwise queue up across examples


async def test_session_closes_promptly_after_fuzzing(client: TestClient, live: tuple[RtcCustomer, str]) -> None:  # type: ignore[type-arg]
    customer, sid = live
    nasty: list[str | bytes] = ["", b"", "null", "[]", '{"type": 1}', '{"type": "text", "text": 5}',
                                '{"type": "text", "text": "\\ud800"}', b"\xff\xfe", '{"type": "text", "text": "hello there"}', "{" * 5000]
    for message in nasty:
        customer.channel.send(message)
    await pong(customer)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await client.app[SESSIONS].close(sid)
    # Bounded by the session's own close timeout (plus the peer's): never stuck.
    assert loop.time() - started < CLOSE_TIMEOUT + 6
    assert client.app[SESSIONS].get(sid) is None
