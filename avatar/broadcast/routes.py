"""The broadcast stage API (registered by ``setup(app)``).

- ``POST /api/stages`` ``{"avatar"?, "driver"?: "brain"|"script"|"operator"}`` → 201 with the stage
  (its ``stage_id``, ``view_key`` and overlay/watch URLs);
- ``GET /api/stages``, ``GET /api/stages/{id}``, ``DELETE /api/stages/{id}``;
- ``POST /api/stages/{id}/offer``: a receive-only viewer (the body and answer of ``/api/offer``).

Managing stages needs the integration API token or an operator's token. Watching needs the
stage's ``view_key`` (``?key=`` or the body's ``"key"``) or the API token.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from avatar.broadcast.stages import STAGES, BroadcastStage, StageDirectory
from avatar.render.catalog import UnknownAvatar
from avatar.rtc.fanout import VARIANTS, BadViewerOffer, ViewerLimit
from avatar.server.app import API_TOKEN, SESSIONS, SETTINGS
from avatar.server.auth import bearer_token, require_api_token
from avatar.server.sessions import ServerFull
from avatar.store import StoreError

routes = web.RouteTableDef()


def _is_api_token(request: web.Request) -> bool:
    token = bearer_token(request)
    return token is not None and hmac.compare_digest(token.encode(), request.app[API_TOKEN].encode())


def authorize_manager(request: web.Request) -> str:
    """Who may manage stages: the API token ("api") or a signed-in operator (their name); else 401."""
    from avatar.server.operator_routes import OPERATORS, operator_of

    if _is_api_token(request):
        return "api"
    if OPERATORS in request.app and bearer_token(request) is not None:
        return operator_of(request)  # 401 for an unknown or expired token
    require_api_token(request, request.app[API_TOKEN])  # answers the right 401
    raise web.HTTPUnauthorized(text="invalid token")  # not reached: the line above raised


def stage_or_404(request: web.Request) -> BroadcastStage:
    stage_id = request.match_info["stage_id"]
    stage = request.app[STAGES].get(stage_id)
    if stage is None:
        raise web.HTTPNotFound(text=f"no live broadcast stage {stage_id!r}")
    return stage


@routes.post("/api/stages")
async def create_stage(request: web.Request) -> web.Response:
    from avatar.server.routes import field, read_json_object

    authorize_manager(request)
    body: dict[str, Any] = await read_json_object(request) if request.can_read_body else {}
    avatar = field(body, "avatar", str, required=False) or request.app[SETTINGS].default_avatar
    driver = field(body, "driver", str, required=False) or "brain"
    directory = request.app[STAGES]
    try:
        stage = await directory.create(avatar, driver)
    except ValueError as exc:
        raise web.HTTPBadRequest(text=str(exc)) from exc
    except UnknownAvatar as exc:
        raise web.HTTPNotFound(text=str(exc.args[0] if exc.args else exc)) from exc
    except ServerFull as exc:
        raise web.HTTPServiceUnavailable(text=str(exc), headers={"Retry-After": "30"}) from exc
    except StoreError as exc:
        # Not made: a stage that could not be stored would not survive a restart.
        raise web.HTTPServiceUnavailable(text=f"the stage could not be stored: {exc}") from exc
    return web.json_response(stage.describe(), status=201)


@routes.get("/api/stages")
async def list_stages(request: web.Request) -> web.Response:
    from avatar.cluster.app import from_peers

    authorize_manager(request)
    stages = [s.describe() for s in request.app[STAGES].stages.values()]
    others, unreachable = await from_peers(request, "stages")  # the other processes' (cluster mode)
    listed: dict[str, Any] = {"stages": stages + others}
    if unreachable:
        listed["unreachable"] = unreachable
    return web.json_response(listed)


@routes.get("/api/stages/{stage_id}")
async def get_stage(request: web.Request) -> web.Response:
    authorize_manager(request)
    return web.json_response(stage_or_404(request).describe())


@routes.delete("/api/stages/{stage_id}")
async def delete_stage(request: web.Request) -> web.Response:
    authorize_manager(request)
    directory = request.app[STAGES]
    stage_id = request.match_info["stage_id"]
    if directory.get(stage_id) is None:
        # Stored but not on air (its avatar is gone, or there was no room at the last start):
        # ended here, so it stops coming back.
        try:
            ended = await directory.end_stored(stage_id)
        except StoreError as exc:
            raise web.HTTPServiceUnavailable(text=f"the stage's end could not be stored: {exc}") from exc
        if not ended:
            raise web.HTTPNotFound(text=f"no broadcast stage {stage_id!r}")
        return web.json_response({"status": "ended", "stage_id": stage_id, "on_air": False})
    stage = stage_or_404(request)
    try:
        await request.app[STAGES].delete(stage.id)
    except StoreError as exc:
        message = f"the stage is closed, but its end could not be stored (it may come back after a restart): {exc}"
        raise web.HTTPServiceUnavailable(text=message) from exc
    return web.json_response({"status": "closed", "stage_id": stage.id})


def _has_manager_token(request: web.Request) -> bool:
    """Whether the request carries the API token or a valid operator's token."""
    from avatar.server.operator_routes import OPERATORS

    if _is_api_token(request):
        return True
    token = bearer_token(request)
    return token is not None and OPERATORS in request.app and request.app[OPERATORS].tokens.resolve(token) is not None


@routes.post("/api/stages/{stage_id}/offer")
async def viewer_offer(request: web.Request) -> web.Response:
    """A receive-only viewer: ``{"sdp", "type": "offer", "variant"?: "main"|"overlay", "key"?}``;
    the stage's view key (here or as ``?key=``) or the API token (or an operator's) is required."""
    from avatar.server.routes import field, offer_fields, read_json_object

    body = await read_json_object(request)
    stage = request.app[STAGES].get(request.match_info["stage_id"])
    key = request.query.get("key")
    if key is None:
        key = field(body, "key", str, required=False)
    allowed = stage is not None and stage.key_matches(key)
    if not allowed and not _has_manager_token(request):
        # Whether the stage exists is not told to a caller without a valid key or token.
        message = "a valid view key (?key=) or API token is required to watch this stage"
        raise web.HTTPUnauthorized(
            text=f'{{"error": "{message}"}}', content_type="application/json", headers={"WWW-Authenticate": "Bearer"}
        )
    if stage is None:
        raise web.HTTPNotFound(text=f"no live broadcast stage {request.match_info['stage_id']!r}")
    sdp, sdp_type = offer_fields(body)
    variant = field(body, "variant", str, required=False) or "main"
    if variant not in VARIANTS:
        raise web.HTTPBadRequest(text=f"'variant' must be one of {', '.join(VARIANTS)}")
    fanout = request.app[STAGES].fanout(stage)
    try:
        viewer_id, answer = await fanout.add_viewer(sdp, sdp_type, variant)
    except ViewerLimit as exc:
        raise web.HTTPServiceUnavailable(text=str(exc), headers={"Retry-After": "30"}) from exc
    except BadViewerOffer as exc:
        raise web.HTTPBadRequest(text=str(exc)) from exc
    return web.json_response(
        {"sdp": answer.sdp, "type": answer.type, "stage_id": stage.id, "viewer_id": viewer_id, "variant": variant}
    )


def setup(app: web.Application) -> None:
    """Register the stage API on ``app`` (before the static pages, after the operator API: the
    directory is built once the session manager and the store exist, and torn down before them).
    The stored stages come back once every context is up (``on_startup`` runs after the cleanup
    contexts' setup), so the cluster and the operator desk hear of them like of new ones."""
    from avatar.server.operator_routes import OPERATORS

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        store = app[OPERATORS].store if OPERATORS in app else None
        app[STAGES] = StageDirectory(app[SESSIONS], store=store)
        yield
        await app[STAGES].close_all()

    async def restore(app: web.Application) -> None:
        from avatar.cluster.app import CLUSTER

        if CLUSTER not in app:
            await app[STAGES].restore()
            return
        cluster = app[CLUSTER]

        async def live_elsewhere(stage_id: str) -> bool:
            # Processes sharing one data dir share the stored stages: one on air on a live
            # process stays there.
            owner = await cluster.owner(stage_id)
            return owner is not None and owner.id != cluster.node.id

        await app[STAGES].restore(live_elsewhere)

    async def shutting_down(app: web.Application) -> None:
        # Before any context closes the sessions: the stages closed from here on stay on air in
        # the store and come back on the next start.
        app[STAGES].shutting_down = True

    app.cleanup_ctx.append(ctx)
    app.on_startup.append(restore)
    app.on_shutdown.append(shutting_down)
    app.add_routes(routes)
