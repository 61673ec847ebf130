"""The aiohttp application: engines and the session registry live on the app under typed
keys, built and torn down in ``cleanup_ctx``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from aiohttp import web

from avatar.config import Settings
from avatar.logs import SESSION_ID
from avatar.metrics import ErrorLogCounter, Metrics
from avatar.server.auth import load_or_create_token, require_api_token
from avatar.server.engines import Engines
from avatar.server.security import ClientLimiter, install_headers, require_origin
from avatar.server.sessions import SessionManager

log = logging.getLogger(__name__)

SETTINGS = web.AppKey("settings", Settings)
ENGINES = web.AppKey("engines", Engines)
SESSIONS = web.AppKey("sessions", SessionManager)
API_TOKEN = web.AppKey("api_token", str)
METRICS = web.AppKey("metrics", Metrics)
CLIENTS = web.AppKey("clients", ClientLimiter)
#: Operator routes whose success is counted as a takeover / handback.
_DESK_ROUTES = {
    "/api/sessions/{session_id}/takeover": "takeovers",
    "/api/sessions/{session_id}/handback": "handbacks",
}


def default_web_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "web"


def json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every API error is JSON ``{"error": message}``; an unexpected exception is a logged 500,
    never a dropped connection."""
    try:
        return await _observed(request, handler)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        if exc.status == 413:
            message = f"request body too large (limit {request.app[SETTINGS].max_body_bytes} bytes)"
        resp = json_error(exc.status, message or exc.reason)
        for key in ("WWW-Authenticate", "Allow"):
            if key in exc.headers:
                resp.headers[key] = exc.headers[key]
        return resp
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        if METRICS in request.app:
            request.app[METRICS].error("internal")
        return json_error(500, "internal server error")


async def _observed(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Run ``handler`` with the request's session id (if it names one) in the logs' context;
    refuse WebSocket upgrades from foreign origins; count operator takeovers and handbacks."""
    if request.headers.get("Upgrade", "").lower() == "websocket":
        require_origin(request, request.app[SETTINGS])
    session_id = request.match_info.get("session_id")
    route = request.match_info.route.resource
    counter = _DESK_ROUTES.get(route.canonical) if route is not None else None
    # A takeover or handback counts when it changed the driver of a session this process owns
    # (not a repeated takeover by the holder, nor a request forwarded to the owning process).
    owned = counter is not None and session_id is not None and SESSIONS in request.app
    session = request.app[SESSIONS].get(session_id) if owned and session_id else None
    driver_before = session.driver if session is not None else None
    token = SESSION_ID.set(session_id) if session_id else None
    try:
        response = await handler(request)
    finally:
        if token is not None:
            SESSION_ID.reset(token)
    if counter and session is not None and response.status == 200 and session.driver is not driver_before:
        getattr(request.app[METRICS], counter).inc()
    return response


async def metrics_endpoint(request: web.Request) -> web.Response:
    """``GET /metrics``: Prometheus text format; needs the API token unless ``metrics_auth`` is
    "none"."""
    if request.app[SETTINGS].metrics_auth == "token":
        require_api_token(request, request.app[API_TOKEN])
    from prometheus_client import CONTENT_TYPE_LATEST

    body = request.app[METRICS].expose()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _metrics_ctx(app: web.Application) -> AsyncIterator[None]:
    """Metrics follow the session manager (and the broadcast stages); sessions per client are
    released when a session ends; ERROR log records are counted."""
    from avatar.broadcast.stages import STAGES

    metrics = app[METRICS]
    stages: Callable[[], dict[str, int]] | None = None
    if STAGES in app:
        directory = app[STAGES]

        def stages() -> dict[str, int]:
            return {
                stage_id: (record.media.viewer_count() if record.media is not None else 0)
                for stage_id, record in list(directory.stages.items())
            }

    metrics.bind(app[SESSIONS], stages)
    clients = app[CLIENTS]
    app[SESSIONS].on_session_end.append(lambda session: clients.release(session.id))
    counter = ErrorLogCounter(metrics)
    logging.getLogger("avatar").addHandler(counter)
    yield
    logging.getLogger("avatar").removeHandler(counter)


async def _engines_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    owned = ENGINES not in app  # engines passed in (tests) belong to the caller
    if owned:
        app[ENGINES] = Engines.build(settings)
    engines = app[ENGINES]
    started_loading = False
    if settings.driver == "brain" and engines.brain is None and engines.brain_loading is None:
        from avatar.brain.kb import load_kb
        from avatar.drivers import load_brain_in_background

        # Validating is quick: a broken knowledge base stops the start with its errors. Learning
        # can take minutes the first time, so it runs in the background while the server listens.
        await asyncio.to_thread(load_kb, settings.kb_path)
        log.info("the dialogue brain is loading (the first start learns the knowledge base: a few minutes)")
        engines.brain_loading = asyncio.create_task(load_brain_in_background(engines, settings), name="brain-load")
        started_loading = True
    await engines.warm_up()
    app[SESSIONS] = SessionManager(engines, settings)
    yield
    # Graceful shutdown: close every peer and session, then the engines.
    await app[SESSIONS].close_all()
    if started_loading and engines.brain_loading is not None and not engines.brain_loading.done():
        engines.brain_loading.cancel()  # the worker thread finishes on its own; nobody waits for it
    if owned:
        await engines.aclose()  # releases the recogniser, then the thread pools


def create_app(settings: Settings, engines: Engines | None = None) -> web.Application:
    """Build the application. ``engines`` may be passed in (tests share one set)."""
    from avatar.server import operator_routes, routes

    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[error_middleware])
    app[SETTINGS] = settings
    if engines is not None:
        app[ENGINES] = engines
    app[API_TOKEN] = load_or_create_token(settings.api_token, settings.data_dir)
    app[METRICS] = Metrics()
    app[CLIENTS] = ClientLimiter(settings.max_sessions_per_client)
    install_headers(app, settings)
    app.cleanup_ctx.append(_engines_ctx)
    operator_routes.setup(app)
    from avatar.broadcast import routes as broadcast_routes  # stages and their viewers (issue 7)

    broadcast_routes.setup(app)
    from avatar.broadcast import show_routes  # comments, show scripts, RTMP out (issue 7)

    show_routes.setup(app)
    from avatar.cluster import app as cluster  # several processes through Redis (issue 8)

    cluster.setup(app)
    app.cleanup_ctx.append(_metrics_ctx)  # after the stage directory exists
    app.router.add_get("/metrics", metrics_endpoint)
    routes.setup_routes(app, settings.web_dir or default_web_dir())
    return app

