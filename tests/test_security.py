"""Security against the real app: headers (and pages that work under the CSP), WebSocket
origins, body limits, sessions per client address behind trusted proxies, the data-channel
token bucket (real aiortc customer), and time-limited TURN credentials."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from avatar.config import IceServer
from avatar.server.app import SESSIONS, create_app, default_web_dir
from avatar.server.engines import Engines
from avatar.server.security import ClientLimiter, TokenBucket, TooManySessions, rate_limited, turn_credentials
from tests.conftest import API_TOKEN, make_settings
from tests.rtc_client import RtcCustomer
from tests.test_operator_api import wait_until
from tests.test_server import connect


async def make_client(aiohttp_client: Any, engines: Engines, tmp_path: Path, **overrides: Any) -> TestClient:  # type: ignore[type-arg]
    app = create_app(make_settings(tmp_path, **overrides), engines=engines)
    client: TestClient = await aiohttp_client(app)  # type: ignore[type-arg]
    return client


# -- headers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/", "/index.html", "/operator.html", "/mirror.html", "/app.js", "/style.css", "/healthz", "/api/config",
             "/api/sessions", "/api/no-such-route", "/no-such-page.html"]
)
async def test_security_headers_on_every_response(client: TestClient, path: str) -> None:  # type: ignore[type-arg]
    resp = await client.get(path)
    csp = resp.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp and "'unsafe-inline'" not in csp
    assert "frame-ancestors 'self'" in csp
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    assert "microphone=(self)" in resp.headers["Permissions-Policy"]
    assert "camera=(self)" in resp.headers["Permissions-Policy"]
    assert "Strict-Transport-Security" not in resp.headers  # plain HTTP: no HSTS


async def test_frame_ancestors_is_configurable(aiohttp_client: Any, engines: Engines, tmp_path: Path) -> None:
    client = await make_client(aiohttp_client, engines, tmp_path, frame_ancestors=["'self'", "https://studio.example.com"])
    resp = await client.get("/")
    assert "frame-ancestors 'self' https://studio.example.com" in resp.headers["Content-Security-Policy"]
    assert "X-Frame-Options" not in resp.headers  # it cannot express a list; CSP decides


class _InlineFinder(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.inline: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {name for name, _ in attrs}
        if tag == "script" and "src" not in names:
            self.inline.append("<script> without src")
        if tag == "style":
            self.inline.append("<style>")
        if "style" in names:
            self.inline.append(f"style attribute on <{tag}>")
        self.inline.extend(f"{name} handler on <{tag}>" for name in names if name.startswith("on"))
        for name, value in attrs:
            if value and value.strip().lower().startswith("javascript:"):
                self.inline.append(f"javascript: URL in {name}")


def test_pages_have_no_inline_code_the_csp_would_block() -> None:
    pages = sorted(default_web_dir().glob("*.html"))
    assert pages
    for page in pages:
        finder = _InlineFinder()
        finder.feed(page.read_text(encoding="utf-8"))
        assert finder.inline == [], (page.name, finder.inline)
    for script in default_web_dir().glob("*.js"):
        text = script.read_text(encoding="utf-8")
        assert not re.search(r"\beval\(|new Function\(|setAttribute\(\s*[\"']style", text), script.name


# -- WebSocket origins -----------------------------------------------------------------------------


async def _ws_status(client: TestClient, origin: str | None, host: str | None = None) -> int:  # type: ignore[type-arg]
    headers = {} if origin is None else {"Origin": origin}
    if host is not None:
        headers["Host"] = host
    try:
        ws = await client.ws_connect("/api/operator/ws", headers=headers)
    except aiohttp.WSServerHandshakeError as exc:
        return exc.status
    await ws.close()
    return 101


async def test_operator_websocket_origin_checks(aiohttp_client: Any, engines: Engines, tmp_path: Path) -> None:
    client = await make_client(aiohttp_client, engines, tmp_path, allowed_origins=["https://desk.example.com"])
    own = f"http://{client.host}:{client.port}"
    assert await _ws_status(client, own) == 101  # same origin
    assert await _ws_status(client, None) == 101  # not a browser: authenticates with its token anyway
    assert await _ws_status(client, "https://desk.example.com") == 101  # listed
    assert await _ws_status(client, "https://evil.example.com") == 403
    assert await _ws_status(client, f"http://{client.host}:1") == 403  # another port is another origin
    assert await _ws_status(client, "null") == 403
    # Behind a proxy the browser's Host (passed on by the proxy) is what the Origin must match.
    assert await _ws_status(client, "https://avatar.example.com", host="avatar.example.com") == 101
    resp = await client.get("/api/operator/ws", headers={"Origin": "https://evil.example.com", "Upgrade": "websocket",
                                                         "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                                                         "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
    assert resp.status == 403 and (await resp.json())["error"] == "origin not allowed"


# -- body size -------------------------------------------------------------------------------------


async def test_bodies_over_the_limit_get_413(client: TestClient) -> None:  # type: ignore[type-arg]
    # The client fixture allows 16 KiB.
    for path in ("/api/offer", "/api/operator/login", "/api/stages"):
        resp = await client.post(path, data=b"{" + b" " * (20 * 1024) + b"}",
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {API_TOKEN}"})
        assert resp.status == 413, (path, resp.status)
        assert "too large" in (await resp.json())["error"]


# -- sessions per client ---------------------------------------------------------------------------


async def _offer(client: TestClient, headers: dict[str, str] | None = None) -> tuple[int, RtcCustomer]:  # type: ignore[type-arg]
    customer = RtcCustomer()
    resp = await client.post("/api/offer", json=await customer.offer(), headers=headers or {})
    if resp.status == 200:
        await customer.accept(await resp.json())
    else:
        assert "error" in await resp.json()
    return resp.status, customer


async def test_sessions_per_client_address(aiohttp_client: Any, engines: Engines, tmp_path: Path) -> None:
    client = await make_client(aiohttp_client, engines, tmp_path, max_sessions_per_client=1, max_sessions=5)
    customers: list[RtcCustomer] = []
    try:
        status, c = await _offer(client)
        customers.append(c)
        assert status == 200
        # Same address again: 429. X-Forwarded-For is not believed from an untrusted peer.
        for headers in (None, {"X-Forwarded-For": "203.0.113.9"}):
            status, c = await _offer(client, headers)
            customers.append(c)
            assert status == 429
        # The first session ends: the address may connect again.
        (sid,) = client.app[SESSIONS].sessions
        auth = {"Authorization": f"Bearer {API_TOKEN}"}
        assert (await client.delete(f"/api/sessions/{sid}", headers=auth)).status == 200
        status, c = await _offer(client)
        customers.append(c)
        assert status == 200
    finally:
        for c in customers:
            await c.close()


async def test_forwarded_for_from_a_trusted_proxy(aiohttp_client: Any, engines: Engines, tmp_path: Path) -> None:
    client = await make_client(
        aiohttp_client, engines, tmp_path, max_sessions_per_client=1, max_sessions=5, trusted_proxies=["127.0.0.0/8"]
    )
    customers: list[RtcCustomer] = []
    try:
        for forwarded, expected in [
            ("203.0.113.1", 200),
            ("203.0.113.2", 200),  # another customer behind the same proxy
            ("203.0.113.1", 429),
            # A client cannot dodge the limit by prepending a fake hop: the proxy's entry counts.
            ("198.51.100.7, 203.0.113.1", 429),
            # Trusted hops on the right are skipped.
            ("203.0.113.3, 127.0.0.5", 200),
        ]:
            status, c = await _offer(client, {"X-Forwarded-For": forwarded})
            customers.append(c)
            assert status == expected, forwarded
    finally:
        for c in customers:
            await c.close()


def test_client_limiter_gives_the_place_back_when_an_offer_fails() -> None:
    limiter = ClientLimiter(1)
    with pytest.raises(ValueError), limiter.admit("198.51.100.1"):
        raise ValueError("bad SDP")
    with limiter.admit("198.51.100.1") as bind:
        bind("s1")
    with pytest.raises(TooManySessions), limiter.admit("198.51.100.1"):
        pass
    limiter.release("s1")
    assert limiter.live("198.51.100.1") == 0


# -- data-channel message rates --------------------------------------------------------------------


def test_token_bucket_on_a_fake_clock() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=2.0, burst=3, clock=lambda: now[0])
    assert [bucket.allow() for _ in range(4)] == [True, True, True, False]
    now[0] += 0.5  # one token back
    assert [bucket.allow() for _ in range(2)] == [True, False]
    now[0] += 100.0  # never more than the burst
    assert sum(bucket.allow() for _ in range(10)) == 3


def test_rate_limited_handler_answers_one_error_per_flood() -> None:
    now = [0.0]
    handled: list[Any] = []
    events: list[dict[str, Any]] = []
    settings = make_settings(Path("unused"), channel_rate=1.0, channel_burst=2)
    limited = rate_limited(handled.append, events.append, settings, clock=lambda: now[0])
    for i in range(10):
        limited(i)
    assert handled == [0, 1]
    assert events == [{"type": "error", "message": "too many messages: slow down", "code": "rate_limited"}]
    now[0] += 1.0
    limited("later")
    assert handled[-1] == "later"


async def test_flooding_the_data_channel_gets_an_error_not_a_crash(
    aiohttp_client: Any, engines: Engines, tmp_path: Path
) -> None:
    client = await make_client(aiohttp_client, engines, tmp_path, channel_rate=0.001, channel_burst=3)
    customer, sid = await connect(client)
    try:
        for _ in range(40):
            customer.send({"type": "ping"})
        await customer.wait_for_event(lambda e: e["type"] == "error" and e.get("code") == "rate_limited")
        await wait_until(lambda: sum(e["type"] == "pong" for e in customer.got.events) == 3)
        assert sum(e.get("code") == "rate_limited" for e in customer.got.events) == 1
        assert sid in client.app[SESSIONS].sessions  # still live
        metrics = await (await client.get("/metrics", headers={"Authorization": f"Bearer {API_TOKEN}"})).text()
        assert 'avatar_errors_total{kind="rate_limited"} 1.0' in metrics
    finally:
        await customer.close()


# -- TURN ------------------------------------------------------------------------------------------


def test_turn_credentials_follow_the_coturn_rest_scheme() -> None:
    username, password = turn_credentials("s3cret", 600, now=1_700_000_000, tag="abc")
    assert username == "1700000600:abc"
    expected = base64.b64encode(hmac.new(b"s3cret", b"1700000600:abc", hashlib.sha1).digest()).decode()
    assert password == expected


async def test_page_config_hands_out_time_limited_turn_credentials(
    aiohttp_client: Any, engines: Engines, tmp_path: Path
) -> None:
    client = await make_client(
        aiohttp_client, engines, tmp_path, turn_secret="s3cret", turn_ttl=600,
        turn_urls=["turn:turn.example.com:3478?transport=udp", "turns:turn.example.com:5349"],
        ice_servers=[IceServer(["stun:stun.example.com:3478"])],
    )
    before = time.time()
    config = await (await client.get("/api/config")).json()
    stun, turn = config["iceServers"]
    assert stun == {"urls": ["stun:stun.example.com:3478"]}
    assert turn["urls"] == ["turn:turn.example.com:3478?transport=udp", "turns:turn.example.com:5349"]
    expiry, _, tag = turn["username"].partition(":")
    assert before + 600 - 1 <= int(expiry) <= time.time() + 600 and tag
    digest = hmac.new(b"s3cret", turn["username"].encode(), hashlib.sha1).digest()
    assert turn["credential"] == base64.b64encode(digest).decode()
    again = await (await client.get("/api/config")).json()
    assert again["iceServers"][1]["username"] != turn["username"]  # a fresh one per page load


async def test_no_turn_without_a_secret(client: TestClient) -> None:  # type: ignore[type-arg]
    assert (await (await client.get("/api/config")).json())["iceServers"] == []
