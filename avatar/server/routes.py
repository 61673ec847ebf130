"""HTTP routes: health, the WebRTC offer, the integration API and the static pages."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from aiohttp import web

from avatar.render.catalog import UnknownAvatar
from avatar.server.app import API_TOKEN, CLIENTS, ENGINES, SESSIONS, SETTINGS
from avatar.server.auth import require_api_token
from avatar.server.security import TooManySessions, client_address, turn_ice_servers
from avatar.server.sessions import BadOffer, ServerFull
from avatar.session import MAX_TEXT_CHARS, Session

routes = web.RouteTableDef()

#: A bank's customer id as the page may pass it (stored with the transcript; no free text).
CUSTOMER_ID = re.compile(r"[A-Za-z0-9._:@-]{1,64}")


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 that says what is wrong."""
    try:
        body = await request.json(loads=json.loads)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise web.HTTPBadRequest(text=f"malformed JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="the body must be a JSON object")
    return body


def field(body: dict[str, Any], name: str, kind: type, required: bool = True) -> Any:
    value = body.get(name)
    if value is None:
        if required:
            raise web.HTTPBadRequest(text=f"'{name}' is required")
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise web.HTTPBadRequest(text=f"'{name}' must be a {kind.__name__}")
    return value


def offer_fields(body: dict[str, Any]) -> tuple[str, str]:
    """``sdp`` and ``type`` of a WebRTC offer body (every route that answers an offer), or a 400."""
    sdp = field(body, "sdp", str)
    sdp_type = field(body, "type", str)
    if sdp_type != "offer":
        raise web.HTTPBadRequest(text="'type' must be \"offer\"")
    if not sdp.startswith("v=0"):
        raise web.HTTPBadRequest(text="'sdp' is not an SDP offer (it must start with v=0)")
    return sdp, sdp_type


def session_or_404(request: web.Request) -> Session:
    session_id = request.match_info["session_id"]
    session = request.app[SESSIONS].get(session_id)
    if session is None:
        raise web.HTTPNotFound(text=f"no live session {session_id!r}")
    return session


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    engines = request.app[ENGINES]
    if engines.brain is not None:
        brain = "ready"
    elif engines.brain_loading is None:
        brain = "off"
    elif engines.brain_loading.done():
        brain = "failed"
    else:
        brain = "loading"
    return web.json_response({"status": "ok", "sessions": len(request.app[SESSIONS].sessions), "brain": brain})


@routes.get("/api/avatars")
async def list_avatars(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    avatars = [
        {"name": a.name, "kind": a.kind, "title": a.title} for a in request.app[ENGINES].catalog.list()
    ]
    return web.json_response({"avatars": avatars, "default": settings.default_avatar})


@routes.get("/api/config")
async def page_config(request: web.Request) -> web.Response:
    """What the page needs to connect: ICE servers (STUN/TURN) and the stage format."""
    s = request.app[SETTINGS]
    ice = [
        {k: v for k, v in {"urls": i.urls, "username": i.username, "credential": i.credential}.items() if v}
        for i in s.ice_servers
    ] + turn_ice_servers(s)  # time-limited TURN credentials (coturn's REST API scheme)
    return web.json_response({"iceServers": ice, "fps": s.fps, "width": s.width, "height": s.height})


@routes.post("/api/offer")
async def offer(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    sdp, sdp_type = offer_fields(body)
    settings = request.app[SETTINGS]
    avatar = field(body, "avatar", str, required=False) or settings.default_avatar
    mode = field(body, "mode", str, required=False) or "call"
    if mode not in ("call", "mirror"):
        raise web.HTTPBadRequest(text="'mode' must be \"call\" or \"mirror\"")
    customer_id = field(body, "customer_id", str, required=False)
    if customer_id is not None and not CUSTOMER_ID.fullmatch(customer_id):
        raise web.HTTPBadRequest(text="'customer_id' must be 1 to 64 letters, digits, '.', '_', '-', ':' or '@'")
    manager = request.app[SESSIONS]
    address = client_address(request, settings.trusted_proxies)
    try:
        with request.app[CLIENTS].admit(address) as bind:  # max_sessions_per_client
            session, answer = await manager.create_from_offer(sdp, sdp_type, avatar, mode, customer_id)
            bind(session.id)
    except TooManySessions as exc:
        raise web.HTTPTooManyRequests(text=str(exc), headers={"Retry-After": "30"}) from exc
    except UnknownAvatar as exc:
        raise web.HTTPNotFound(text=str(exc.args[0] if exc.args else exc)) from exc
    except ServerFull as exc:
        raise web.HTTPServiceUnavailable(text=str(exc), headers={"Retry-After": "30"}) from exc
    except BadOffer as exc:
        raise web.HTTPBadRequest(text=str(exc)) from exc
    return web.json_response({"sdp": answer.sdp, "type": answer.type, "session_id": session.id})


@routes.get("/api/sessions")
async def list_sessions(request: web.Request) -> web.Response:
    from avatar.cluster.app import from_peers

    require_api_token(request, request.app[API_TOKEN])
    sessions = [s.describe() for s in request.app[SESSIONS].sessions.values()]
    others, unreachable = await from_peers(request, "sessions")  # the other processes' (cluster mode)
    listed: dict[str, Any] = {"sessions": sessions + others}
    if unreachable:
        listed["unreachable"] = unreachable
    return web.json_response(listed)


@routes.post("/api/sessions/{session_id}/say")
async def say(request: web.Request) -> web.Response:
    from avatar.server.operator_routes import authorize_say

    # The API token speaks as the AI; the operator holding the session speaks as themselves.
    speaker = authorize_say(request, request.match_info["session_id"])
    session = session_or_404(request)
    body = await read_json_object(request)
    text = field(body, "text", str).strip()
    if not text:
        raise web.HTTPBadRequest(text="'text' must not be empty")
    if len(text) > MAX_TEXT_CHARS:
        raise web.HTTPBadRequest(text=f"'text' is longer than {MAX_TEXT_CHARS} characters")
    interrupt = field(body, "interrupt", bool, required=False) or False
    lang = field(body, "lang", str, required=False)
    if lang not in (None, "en", "zh"):
        raise web.HTTPBadRequest(text="'lang' must be \"en\" or \"zh\"")
    if session.link_lost_at is not None:
        # Said now, it would be recorded as said and heard by nobody (avatar.rtc.link).
        lost_for = session.stage.clock.time() - session.link_lost_at
        raise web.HTTPConflict(
            text=f"the customer's connection is lost (nothing from them for {lost_for:.0f} s): the line was not said"
        )
    session.say(text, interrupt=interrupt, lang=lang, speaker=speaker)
    return web.json_response({"status": "speaking" if interrupt else "queued", "session_id": session.id})


@routes.post("/api/sessions/{session_id}/interrupt")
async def interrupt(request: web.Request) -> web.Response:
    require_api_token(request, request.app[API_TOKEN])
    session = session_or_404(request)
    cut = session.interrupt()
    return web.json_response({"status": "interrupted", "cut": cut.heard_text() if cut else None})


@routes.delete("/api/sessions/{session_id}")
async def end_session(request: web.Request) -> web.Response:
    require_api_token(request, request.app[API_TOKEN])
    session = session_or_404(request)
    await request.app[SESSIONS].close(session.id)
    return web.json_response({"status": "closed", "session_id": session.id})


def setup_routes(app: web.Application, web_dir: Path) -> None:
    app.add_routes(routes)

    async def index(request: web.Request) -> web.FileResponse:
        return web.FileResponse(web_dir / "index.html")

    app.router.add_get("/", index)
    if web_dir.is_dir():
        app.router.add_static("/", web_dir, show_index=False, follow_symlinks=False)
