"""The operators' HTTP API and event WebSocket (registered by ``setup(app)``).

Every route here needs an operator's bearer token from ``POST /api/operator/login``, except
the transcript, which also accepts the integration API token. Customers' pages have neither.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from avatar.brain.compliance import redact
from avatar.operator.hub import Subscription
from avatar.operator.live import BadMediaOffer, OperatorMedia
from avatar.operator.service import OperatorService
from avatar.operator.takeover import TakeoverError
from avatar.server.app import API_TOKEN, ENGINES, SESSIONS, SETTINGS, default_web_dir
from avatar.server.auth import bearer_token, require_api_token
from avatar.session import MAX_TEXT_CHARS

log = logging.getLogger(__name__)

OPERATORS = web.AppKey("operators", OperatorService)
OPERATOR_MEDIA = web.AppKey("operator_media", OperatorMedia)
WS_AUTH_TIMEOUT = 10.0  # seconds a socket may stay open before sending its token
MAX_SAY_SESSIONS = 50
HISTORY_SESSIONS = 10  # earlier sessions of a customer shown on the desk

routes = web.RouteTableDef()


def _unauthorized(message: str) -> web.HTTPUnauthorized:
    return web.HTTPUnauthorized(
        text=f'{{"error": "{message}"}}', content_type="application/json", headers={"WWW-Authenticate": "Bearer"}
    )


def _conflict(exc: TakeoverError) -> web.HTTPException:
    cls: type[web.HTTPException] = web.HTTPNotFound if exc.status == 404 else web.HTTPConflict
    return cls(text=str(exc))


def operator_of(request: web.Request) -> str:
    """The signed-in operator making the request, or 401."""
    token = bearer_token(request)
    if token is None:
        raise _unauthorized("missing Authorization: Bearer <operator token>")
    name = request.app[OPERATORS].tokens.resolve(token)
    if name is None:
        if hmac.compare_digest(token.encode(), request.app[API_TOKEN].encode()):
            # The integration token is valid but is nobody: say so rather than "invalid".
            raise _unauthorized("this needs a signed-in operator's token (POST /api/operator/login), not the API token")
        raise _unauthorized("invalid or expired operator token")
    return name


def _is_api_token(request: web.Request) -> bool:
    token = bearer_token(request)
    return token is not None and hmac.compare_digest(token.encode(), request.app[API_TOKEN].encode())


def authorize_say(request: web.Request, session_id: str) -> str:
    """Who may make session ``session_id`` speak: the integration API token (the line is the AI's) or
    the operator holding the session (the line is theirs: 409 for an operator not holding
    it). Returns the speaker to record. Used by ``POST /api/sessions/{id}/say``."""
    if OPERATORS not in request.app or _is_api_token(request):
        require_api_token(request, request.app[API_TOKEN])
        return "ai"
    token = bearer_token(request)
    name = request.app[OPERATORS].tokens.resolve(token) if token else None
    if name is None:
        require_api_token(request, request.app[API_TOKEN])  # answers the right 401
        raise _unauthorized("invalid token")
    try:
        request.app[OPERATORS].desk.require_holder(session_id, name)
    except TakeoverError as exc:
        raise _conflict(exc) from exc
    return name


async def _json(request: web.Request) -> dict[str, Any]:
    from avatar.server.routes import read_json_object

    # body_exists, not can_read_body: a middleware that already read the body (the cluster's
    # shared sign-in limiter) leaves the stream at its end, and aiohttp keeps the bytes for us.
    if not request.body_exists:
        return {}
    return await read_json_object(request)


def _text(body: dict[str, Any]) -> str:
    text = body.get("text")
    if not isinstance(text, str) or not text.strip():
        raise web.HTTPBadRequest(text="'text' must be a non-empty string")
    if len(text) > MAX_TEXT_CHARS:
        raise web.HTTPBadRequest(text=f"'text' is longer than {MAX_TEXT_CHARS} characters")
    return text.strip()


def _lang(body: dict[str, Any]) -> str | None:
    lang = body.get("lang")
    if lang not in (None, "en", "zh"):
        raise web.HTTPBadRequest(text="'lang' must be \"en\" or \"zh\"")
    return lang


def _interrupt(body: dict[str, Any]) -> bool:
    value = body.get("interrupt", False)
    if not isinstance(value, bool):
        raise web.HTTPBadRequest(text="'interrupt' must be a boolean")
    return value


# -- accounts ------------------------------------------------------------------------------------
@routes.post("/api/operator/login")
async def login(request: web.Request) -> web.Response:
    ops = request.app[OPERATORS]
    body = await _json(request)
    name, password = body.get("name"), body.get("password")
    if not isinstance(name, str) or not name or not isinstance(password, str) or not password:
        raise web.HTTPBadRequest(text="'name' and 'password' are required strings")
    address = request.remote or "?"
    wait = ops.limiter.retry_after(name, address)
    if wait is not None:
        seconds = int(wait) + 1
        raise web.HTTPTooManyRequests(  # JSON here: the error middleware keeps only some headers
            text=_dumps({"error": f"too many failed sign-ins: try again in {seconds} s"}),
            content_type="application/json",
            headers={"Retry-After": str(seconds)},
        )
    ok = await asyncio.to_thread(ops.accounts.verify, name, password)
    if not ok:
        ops.limiter.failed(name, address)
        ops.store.add_event("login_failed", operator=name[:64], detail={"address": address})
        raise _unauthorized("wrong name or password")
    ops.limiter.succeeded(name)
    token = ops.tokens.issue(name)
    await asyncio.wrap_future(ops.store.add_event("login", operator=name, detail={"address": address}))
    return web.json_response({"token": token, "operator": name, "expires_in": ops.tokens.ttl})


@routes.post("/api/operator/logout")
async def logout(request: web.Request) -> web.Response:
    ops = request.app[OPERATORS]
    name = operator_of(request)
    token = bearer_token(request)
    assert token is not None  # operator_of checked it
    released = await ops.desk.release_all(name, reason="logout")
    await request.app[OPERATOR_MEDIA].close_operator(name)
    ops.tokens.revoke(token)
    await asyncio.wrap_future(ops.store.add_event("logout", operator=name, detail={"released": released}))
    return web.json_response({"status": "signed out", "released": released})


# -- sessions ------------------------------------------------------------------------------------
@routes.get("/api/operator/sessions")
async def operator_sessions(request: web.Request) -> web.Response:
    from avatar.cluster.app import operator_view

    name = operator_of(request)
    held, sessions, partial = await operator_view(request.app, name)  # every server process's sessions
    body: dict[str, Any] = {"operator": name, "held": held, "sessions": sessions}
    if partial is not None:
        body["partial"] = partial  # the list is this process's own: say so, never a silent gap
    return web.json_response(body)


@routes.get("/api/sessions/{session_id}/transcript")
async def transcript(request: web.Request) -> web.Response:
    """A session's transcript (live or ended) and its audit events. Accepts the integration
    API token or an operator's token. (This route is registered before the core routes, so it
    answers for the path.)"""
    if not _is_api_token(request):
        operator_of(request)
    ops = request.app[OPERATORS]
    session_id = request.match_info["session_id"]
    await asyncio.to_thread(ops.store.flush)  # read our own writes: lines said just now are included
    utterances = await asyncio.to_thread(ops.store.transcript, session_id)
    events = await asyncio.to_thread(ops.store.events, session_id)
    live = request.app[SESSIONS].get(session_id)
    if not utterances and not events and live is None:
        raise web.HTTPNotFound(text=f"no session {session_id!r}")
    # "transcript": the short form (speaker, text, at, interrupted), from the live session when
    # there is one (complete up to this instant), else from the store; redacted either way.
    if live is not None:
        short = [{**entry, "text": redact(entry["text"])} for entry in live.transcript_dicts()]
    else:
        short = [{"speaker": u.speaker, "text": u.text, "at": u.ended, "interrupted": u.interrupted} for u in utterances]
    return web.json_response(
        {
            "session_id": session_id,
            "transcript": short,
            "utterances": [u.to_dict() for u in utterances],
            "events": [e.to_dict() for e in events],
        },
        dumps=_dumps,
    )


@routes.post("/api/sessions/{session_id}/takeover")
async def takeover(request: web.Request) -> web.Response:
    name = operator_of(request)
    desk = request.app[OPERATORS].desk
    try:
        await desk.takeover(request.match_info["session_id"], name)
    except TakeoverError as exc:
        raise _conflict(exc) from exc
    return web.json_response({"status": "operator", "session": desk.summary(request.match_info["session_id"])})


@routes.post("/api/sessions/{session_id}/handback")
async def handback(request: web.Request) -> web.Response:
    name = operator_of(request)
    desk = request.app[OPERATORS].desk
    try:
        await desk.handback(request.match_info["session_id"], name)
    except TakeoverError as exc:
        raise _conflict(exc) from exc
    return web.json_response({"status": "ai", "session": desk.summary(request.match_info["session_id"])})


@routes.post("/api/operator/say")
async def say_many(request: web.Request) -> web.Response:
    """One line to several sessions the operator holds; all or nothing (409 naming the
    sessions not held, and nothing is said)."""
    name = operator_of(request)
    desk = request.app[OPERATORS].desk
    body = await _json(request)
    ids = body.get("sessions")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise web.HTTPBadRequest(text="'sessions' must be a non-empty list of session ids")
    if len(ids) > MAX_SAY_SESSIONS:
        raise web.HTTPBadRequest(text=f"at most {MAX_SAY_SESSIONS} sessions at once")
    text, interrupt, lang = _text(body), _interrupt(body), _lang(body)
    missing = [i for i in ids if i not in desk.seats]
    if missing:
        raise web.HTTPNotFound(text=f"no live session {', '.join(missing)}")
    not_held = [i for i in ids if desk.seats[i].holder != name]
    if not_held:
        raise web.HTTPConflict(text=f"operator {name!r} does not hold {', '.join(not_held)}")
    unreachable = [i for i in ids if desk.seats[i].session.link_lost_at is not None]
    if unreachable:
        raise web.HTTPConflict(text=f"the customer's connection is lost in {', '.join(unreachable)}: nothing was said")
    for session_id in dict.fromkeys(ids):
        desk.seats[session_id].session.say(text, interrupt=interrupt, lang=lang, speaker=name)
    return web.json_response({"status": "speaking" if interrupt else "queued", "sessions": list(dict.fromkeys(ids))})


# -- live media: watching a session, driving it by voice or camera --------------------------------
async def _offer(request: web.Request) -> tuple[str, str]:
    from avatar.server.routes import offer_fields

    return offer_fields(await _json(request))


async def _media_answer(request: web.Request, kind: str) -> web.Response:
    """Answer the signed-in operator's offer to ``kind`` ("watch" or "drive") the session."""
    name = operator_of(request)
    sdp, sdp_type = await _offer(request)
    media = request.app[OPERATOR_MEDIA]
    connect = media.watch if kind == "watch" else media.drive
    try:
        answer = await connect(request.match_info["session_id"], name, sdp, sdp_type)
    except TakeoverError as exc:
        raise _conflict(exc) from exc
    except BadMediaOffer as exc:
        raise web.HTTPBadRequest(text=str(exc)) from exc
    return web.json_response({"sdp": answer.sdp, "type": answer.type})


@routes.post("/api/operator/sessions/{session_id}/watch")
async def watch(request: web.Request) -> web.Response:
    """A receive-only WebRTC view of a session for any signed-in operator: the avatar's video and
    voice as the customer gets them, and the customer's microphone."""
    return await _media_answer(request, "watch")


@routes.post("/api/operator/sessions/{session_id}/drive")
async def drive(request: web.Request) -> web.Response:
    """The holder's microphone (voice mode) and/or webcam (camera mode) drive the avatar."""
    return await _media_answer(request, "drive")


@routes.delete("/api/operator/sessions/{session_id}/{kind:watch|drive}")
async def stop_media(request: web.Request) -> web.Response:
    """Close the operator's watch (or drive) peer for a session."""
    name = operator_of(request)
    media = request.app[OPERATOR_MEDIA]
    peers = media.find(request.match_info["kind"], request.match_info["session_id"], name)
    for peer in peers:
        await media.close(peer)
    return web.json_response({"status": "closed", "closed": len(peers)})


@routes.get("/api/operator/sessions/{session_id}/history")
async def history(request: web.Request) -> web.Response:
    """The customer's earlier sessions (same customer id), most recent first, with their
    utterances (redacted as stored)."""
    operator_of(request)
    ops = request.app[OPERATORS]
    session_id = request.match_info["session_id"]
    live = request.app[SESSIONS].get(session_id)
    if live is None:
        raise web.HTTPNotFound(text=f"no live session {session_id!r}")
    customer_id = live.customer_id
    earlier: list[dict[str, Any]] = []
    if customer_id is not None:
        ids = await asyncio.to_thread(ops.store.customer_sessions, customer_id, HISTORY_SESSIONS + 1)
        for sid in [i for i in ids if i != session_id][:HISTORY_SESSIONS]:
            utterances = await asyncio.to_thread(ops.store.transcript, sid)
            earlier.append({
                "session_id": sid,
                "started": min((u.started for u in utterances), default=None),
                "ended": max((u.ended for u in utterances), default=None),
                "utterances": [u.to_dict() for u in utterances],
            })
    return web.json_response({"session_id": session_id, "customer_id": customer_id, "sessions": earlier},
                             dumps=_dumps)


# -- the event socket ------------------------------------------------------------------------------
async def _authenticate_ws(request: web.Request, ws: web.WebSocketResponse) -> tuple[str, str] | None:
    ops = request.app[OPERATORS]
    token = bearer_token(request)
    if token is None:
        try:
            first = await ws.receive_json(timeout=WS_AUTH_TIMEOUT)
        except (TimeoutError, ValueError, TypeError):
            first = None
        if isinstance(first, dict) and first.get("type") == "auth" and isinstance(first.get("token"), str):
            token = first["token"]
    name = ops.tokens.resolve(token) if token else None
    if token is None or name is None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.send_json({"type": "error", "message": "sign in first: invalid or expired operator token"})
        await ws.close(code=4401, message=b"unauthorized")
        return None
    return name, token


async def _pump(ws: web.WebSocketResponse, sub: Subscription, ops: OperatorService, token: str) -> None:
    while True:
        message = await sub.next()
        if message is None:
            await ws.close(code=1013, message=b"too slow: reconnect for a fresh snapshot")
            return
        if ops.tokens.resolve(token) is None:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.send_json({"type": "error", "message": "your sign-in expired"})
            await ws.close(code=4401, message=b"token expired")
            return
        await ws.send_json(message, dumps=_dumps)


def _dumps(obj: Any) -> str:
    import json

    return json.dumps(obj, ensure_ascii=False)


@routes.get("/api/operator/ws")
async def operator_ws(request: web.Request) -> web.WebSocketResponse:
    ops = request.app[OPERATORS]
    ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=64 * 1024)
    await ws.prepare(request)
    auth = await _authenticate_ws(request, ws)
    if auth is None:
        return ws
    name, token = auth
    sub = ops.hub.subscribe(name)
    pump: asyncio.Task[None] | None = None
    try:
        from avatar.cluster.app import operator_view

        held, sessions, partial = await operator_view(request.app, name)  # every server process's sessions
        hello: dict[str, Any] = {"type": "hello", "operator": name, "held": held, "sessions": sessions}
        if partial is not None:
            hello["partial"] = partial
        await ws.send_json(hello, dumps=_dumps)
        pump = asyncio.create_task(_pump(ws, sub, ops, token), name=f"operator-ws:{name}")
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            try:
                data = msg.json()
            except ValueError:
                await ws.send_json({"type": "error", "message": "messages must be JSON objects"})
                continue
            kind = data.get("type") if isinstance(data, dict) else None
            if kind == "ping":
                await ws.send_json({"type": "pong"})
            elif kind == "auth":
                pass  # a page that sends its token although the header carried one
            else:
                await ws.send_json({"type": "error", "message": f"unknown message type {kind!r}"})
    finally:
        ops.hub.unsubscribe(sub)
        if pump is not None:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
    return ws


# -- wiring --------------------------------------------------------------------------------------
def setup(app: web.Application) -> None:
    """Register the operator API on ``app`` (call after the core routes: its context needs the
    session manager)."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        if OPERATORS not in app:
            app[OPERATORS] = OperatorService.build(app[SETTINGS])
        ops = app[OPERATORS]
        manager = app[SESSIONS]
        manager.on_session_start.append(ops.desk.attach)
        manager.on_session_end.append(ops.desk.detach)
        app[OPERATOR_MEDIA] = media = OperatorMedia(manager, ops.desk, app[ENGINES])
        yield
        # Close the sessions first so their last (cut) lines are recorded, then the store.
        await manager.close_all()
        await media.close_all()
        ops.close()

    app.cleanup_ctx.append(ctx)
    app.add_routes(routes)
    web_dir: Path = app[SETTINGS].web_dir or default_web_dir()

    async def page(request: web.Request) -> web.FileResponse:
        return web.FileResponse(web_dir / "operator.html")

    app.router.add_get("/operator", page)


__all__ = ["OPERATORS", "OPERATOR_MEDIA", "authorize_say", "operator_of", "setup"]
