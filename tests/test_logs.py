"""Structured logs: one JSON object per line with time, level, logger, message and the session
id; personal data redacted; and a real session whose logs carry no customer words."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from avatar.logs import SESSION_ID, JsonFormatter, configure_logging, session_context
from avatar.server.app import SESSIONS, create_app
from avatar.server.engines import Engines
from tests.conftest import API_TOKEN, make_settings
from tests.test_server import connect


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Root logging in JSON into a buffer for the test; the previous set-up is restored after."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    stream = io.StringIO()
    configure_logging("INFO", "json", stream)
    yield stream
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved[0]:
        root.addHandler(handler)
    root.setLevel(saved[1])


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_one_json_object_per_line(captured: io.StringIO) -> None:
    log = logging.getLogger("avatar.test")
    log.info("plain %s", "line")
    token = SESSION_ID.set("0123456789abcdef")
    try:
        log.warning("inside a session")
    finally:
        SESSION_ID.reset(token)
    log.info("session fedcba9876543210 closed")  # the id named in the message
    try:
        raise RuntimeError("card 4111 1111 1111 1111 declined")
    except RuntimeError:
        log.exception("it failed for 13812345678")
    first, second, third, fourth = lines(captured)
    assert set(first) == {"time", "level", "logger", "message"}
    assert first["level"] == "INFO" and first["logger"] == "avatar.test" and first["message"] == "plain line"
    assert first["time"].endswith("+00:00") and "T" in first["time"]
    assert second["session_id"] == "0123456789abcdef" and second["level"] == "WARNING"
    assert third["session_id"] == "fedcba9876543210"
    # Personal data is redacted, in the message and in the traceback.
    assert "13812345678" not in fourth["message"] and "[PHONE]" in fourth["message"]
    assert "RuntimeError" in fourth["exception"] and "4111" not in fourth["exception"]


def test_text_format_is_redacted_too() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure_logging("INFO", "text", stream)
        logging.getLogger("avatar.test").info("mail me at someone@example.com")
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
    out = stream.getvalue()
    assert "someone@example.com" not in out and "avatar.test" in out and "INFO" in out


async def test_session_tasks_carry_their_session_id() -> None:
    seen: list[str | None] = []

    async def work() -> None:
        seen.append(SESSION_ID.get())

    await asyncio.create_task(work(), context=session_context("00000000000000aa"))
    await asyncio.create_task(work())
    assert seen == ["00000000000000aa", None]


def test_json_formatter_without_session() -> None:
    record = logging.LogRecord("avatar.x", logging.ERROR, __file__, 1, "no session here", None, None)
    entry = json.loads(JsonFormatter().format(record))
    assert "session_id" not in entry and entry["level"] == "ERROR"


async def test_a_real_session_logs_no_customer_words(
    captured: io.StringIO, aiohttp_client: Any, engines: Engines, tmp_path: Path
) -> None:
    client = await aiohttp_client(create_app(make_settings(tmp_path), engines=engines))
    customer, sid = await connect(client)
    secret_words = "Zebedee Quintrell card 4111 1111 1111 1111"
    try:
        customer.send({"type": "text", "text": secret_words})
        await customer.wait_for_event(lambda e: e["type"] == "caption")
        session = client.app[SESSIONS].sessions[sid]
        await session.spawn(_log_inside(), "log-probe")
        auth = {"Authorization": f"Bearer {API_TOKEN}"}
        assert (await client.delete(f"/api/sessions/{sid}", headers=auth)).status == 200
    finally:
        await customer.close()
    entries = lines(captured)
    assert entries, "the session logged nothing"
    text = captured.getvalue()
    assert "Zebedee" not in text and "Quintrell" not in text and "4111" not in text
    mine = [e for e in entries if e.get("session_id") == sid]
    assert any("started" in e["message"] for e in mine) and any("closed" in e["message"] for e in mine)
    probe = [e for e in entries if e["message"] == "probe from a session task"]
    assert probe and probe[0]["session_id"] == sid  # from the context variable, not the message


async def _log_inside() -> None:
    logging.getLogger("avatar.test").info("probe from a session task")


def test_the_access_log_keeps_secrets_and_personal_data_out(caplog: pytest.LogCaptureFixture) -> None:
    """The overlay's view key and the customer page's customer id are URL query values: the
    access log names the parameters, hides their values, and names the client only if asked."""
    from aiohttp import web
    from aiohttp.test_utils import make_mocked_request

    from avatar.server.access_log import access_logger, loggable_path

    request = make_mocked_request("GET", "/?customer_id=C-12345678&lang=zh", headers={"X-Forwarded-For": "203.0.113.9"})
    assert loggable_path(request) == "/?customer_id=…&lang=…"
    assert loggable_path(make_mocked_request("GET", "/overlay.html")) == "/overlay.html"
    response = web.Response(text="page")
    logger = logging.getLogger("aiohttp.access")
    with caplog.at_level(logging.INFO, logger="aiohttp.access"):
        access_logger(ips=False, trusted_proxies=[])(logger, "").log(request, response, 0.0123)
        access_logger(ips=True, trusted_proxies=[])(logger, "").log(request, response, 0.0123)
    hidden, named = (r.getMessage() for r in caplog.records if r.name == "aiohttp.access")
    assert "C-12345678" not in hidden + named and "zh" not in hidden + named
    assert hidden.startswith('- "GET /?customer_id=…&lang=…" 200 ') and hidden.endswith(" 12.3ms")
    assert not named.startswith("-") and "203.0.113.9" not in named  # the proxy header is not trusted
