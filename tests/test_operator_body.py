"""The operator routes read their JSON body even when a middleware read it first (the cluster's
shared sign-in limiter does, with ``--redis``): a sign-in must not become a 400."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web

from avatar.server.engines import Engines
from avatar.server.operator_routes import OPERATORS
from tests.conftest import make_settings

PASSWORD = "correct horse battery"


@web.middleware
async def reads_body_first(request: web.Request, handler: web.RequestHandler) -> web.StreamResponse:  # type: ignore[type-arg]
    await request.read()  # as avatar.cluster.app's sign-in limiter does before the route runs
    return await handler(request)


async def test_sign_in_after_a_middleware_read_the_body(
    aiohttp_client: object, engines: Engines, tmp_path: Path
) -> None:
    from avatar.server.app import create_app

    app = create_app(make_settings(tmp_path), engines=engines)
    app.middlewares.append(reads_body_first)
    client = await aiohttp_client(app)  # type: ignore[operator]
    await asyncio.to_thread(client.app[OPERATORS].accounts.add, "alice", PASSWORD)
    resp = await client.post("/api/operator/login", json={"name": "alice", "password": PASSWORD})
    assert resp.status == 200, await resp.text()
    headers = {"Authorization": f"Bearer {(await resp.json())['token']}"}
    assert (await client.get("/api/operator/sessions", headers=headers)).status == 200
    # A body-less POST still reads as an empty object, and a missing field is still a 400.
    assert (await client.post("/api/operator/logout", headers=headers)).status == 200
    missing = await client.post("/api/operator/login", json={"name": "alice"})
    assert missing.status == 400 and "error" in await missing.json()
