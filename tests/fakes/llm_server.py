"""A local OpenAI-compatible ``/v1/chat/completions`` endpoint, for the brain's LLM rephraser.

It records each request and answers in the API's shape. What it answers depends on ``mode``:

- ``"good"``: a faithful rephrasing: "Of course. " followed by the KNOWLEDGE (or the SUGGESTED
  REPLY for small talk) it was sent;
- ``"hallucinate_number"``: the knowledge plus an invented fee ("The fee is 25 dollars.");
- ``"hallucinate_product"``: the knowledge plus an invented product name;
- ``"error"``: HTTP 500 with an error body;
- ``"hang"``: reads the request and never answers until the server closes (client timeouts);
- ``"bad_json"``: a 200 response whose body is not JSON.

``async with FakeLLMServer(mode) as server`` serves on the caller's event loop (for the brain's
async path, whose HTTP call runs in a worker thread); ``with FakeLLMServer(mode).in_thread() as
server`` serves from a thread of its own (for the synchronous ``Brain.reply``).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

from aiohttp import web

Mode = Literal["good", "hallucinate_number", "hallucinate_product", "error", "hang", "bad_json"]


@dataclass(frozen=True)
class ChatRequest:
    model: str
    system: str
    user: str
    authorization: str | None


@dataclass
class FakeLLMServer:
    mode: Mode = "good"
    api_key: str | None = None
    requests: list[ChatRequest] = field(default_factory=list)
    _runner: web.AppRunner | None = None
    _port: int = 0
    _closing: asyncio.Event | None = None

    @property
    def url(self) -> str:
        """The API base URL users configure, e.g. ``http://127.0.0.1:PORT/v1``."""
        return f"http://127.0.0.1:{self._port}/v1"

    async def __aenter__(self) -> FakeLLMServer:
        self._closing = asyncio.Event()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._complete)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self._port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._closing is not None:
            self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()

    @contextmanager
    def in_thread(self) -> Iterator[FakeLLMServer]:
        """Serve from a background thread with its own event loop until the block ends."""
        loop = asyncio.new_event_loop()
        started = threading.Event()
        stop: asyncio.Future[None] = loop.create_future()

        async def serve() -> None:
            async with self:
                started.set()
                await stop

        thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
        thread.start()
        try:
            if not started.wait(10):
                raise RuntimeError("the fake LLM server did not start")
            yield self
        finally:
            loop.call_soon_threadsafe(stop.set_result, None)
            thread.join(10)
            loop.close()

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        body: dict[str, Any] = await request.json()
        messages = body.get("messages", [])
        system = next((m["content"] for m in messages if m.get("role") == "system"), "")
        user = next((m["content"] for m in messages if m.get("role") == "user"), "")
        self.requests.append(ChatRequest(str(body.get("model")), system, user, request.headers.get("Authorization")))
        if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response({"error": {"message": "invalid api key"}}, status=401)
        if self.mode == "error":
            return web.json_response({"error": {"message": "model crashed"}}, status=500)
        if self.mode == "hang":
            assert self._closing is not None
            await self._closing.wait()
            return web.json_response({"error": {"message": "shutting down"}}, status=503)
        if self.mode == "bad_json":
            return web.Response(text="<html>not json</html>", content_type="text/html")
        match = re.search(r"(?:KNOWLEDGE|SUGGESTED REPLY): (.*)\Z", user, re.S)
        knowledge = match.group(1).strip() if match else ""
        lead = "好的。" if re.search(r"[\u4e00-\u9fff]", knowledge) else "Of course. "
        content = lead + knowledge
        if self.mode == "hallucinate_number":
            content += " The fee is 25 dollars."
        elif self.mode == "hallucinate_product":
            content += " You could also try our Platinum Saver account."
        return web.json_response(
            {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "model": body.get("model"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": len(json.dumps(messages)), "completion_tokens": len(content)},
            }
        )
