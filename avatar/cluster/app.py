"""The cluster on the aiohttp application: ``setup(app)`` (called by ``create_app``).

Without ``redis_url`` the process is a ``LocalCluster`` and nothing changes. With it:

- The operator hub's events go to every process (the ``hub`` topic) and every process's
  operator sockets receive them; a session's ``session`` / ``session_closed`` events also
  keep the shared registry current.
- Requests about a session this process does not own (``/api/sessions/{id}/say``,
  ``interrupt``, ``takeover``, ``handback``, ``transcript``, ``DELETE``) are forwarded by
  ``cluster_middleware`` to the process that owns it, with the cluster secret; that process
  answers them as its own (it is the authority for its sessions' takeover state). The
  transcript of an ended session is fetched from the process that stored it (``home:<id>``).
- New comments on a broadcast stage are not forwarded: the Redis ``CommentStore``
  (``avatar.cluster.comments``) queues and moderates them where they arrive and wakes the
  owner's show (the ``comments`` topic).
- ``GET /api/sessions`` and ``GET /api/stages`` add every other live process's answer
  (``from_peers``); sign-in attempts are also counted in Redis (``SharedLoginLimiter``). A line
  for several sessions (``POST /api/operator/say``) is split by owner after checking, on
  every owner, that the operator holds them all.
- Takeovers also take a lock in Redis (``SET NX``) naming the operator.
- Operator tokens live in Redis (``RedisTokenBook``), valid on every process.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import re
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from avatar.cluster.base import Cluster, ClusterUnavailable, LocalCluster, Node
from avatar.config import Settings

if TYPE_CHECKING:
    from avatar.cluster.limits import SharedLoginLimiter

log = logging.getLogger(__name__)

CLUSTER = web.AppKey("cluster", Cluster)
PEER_HTTP = web.AppKey("cluster_http", aiohttp.ClientSession)
LOGIN_LIMITER: web.AppKey[SharedLoginLimiter] = web.AppKey("cluster_login_limiter")
SECRET_HEADER = "X-Avatar-Cluster"  # the cluster secret: this request was forwarded by a peer
VIA_HEADER = "X-Avatar-Via"  # the node that forwarded it
FORWARD_TIMEOUT = 15.0
DRAIN_TIMEOUT = 3.0  # seconds a sign-in's answer waits for its token to reach Redis
PRESENCE_TOPIC = "presence"
PRESENCE_INTERVAL = 1.0  # seconds between presence announcements (grace periods are tens of seconds)

#: Everything about one session or broadcast stage (a stage is a session): its commands, its
#: transcript, an operator's watch and drive offers and the customer's history, a stage's
#: viewers' offers, comments, show script and outputs.
_SESSION_PATH = re.compile(r"^/api/(?:sessions|stages|operator/sessions)/([^/]+)(/.*)?$")
_MULTI_SAY = "/api/operator/say"
_LOGOUT = "/api/operator/logout"
_LOGIN = "/api/operator/login"
#: Comments are queued in Redis by whichever process receives them (avatar.cluster.comments).
_COMMENTS = re.compile(r"^/api/stages/[^/]+/comments$")
#: Request key: the owner of the request's session could not be looked up (Redis away).
_REGISTRY_DOWN = "avatar.cluster.registry_down"
LIST_TIMEOUT = 5.0  # seconds a cluster-wide list waits for each other process


def node_for(settings: Settings) -> Node:
    """This process: a fresh id per start, and the URL peers reach it at."""
    url = settings.advertise_url
    if not url:
        host = settings.host
        if host in ("0.0.0.0", "::", ""):
            host = socket.gethostname()
        scheme = "https" if getattr(settings, "tls_cert", None) else "http"
        url = f"{scheme}://{host}:{settings.port}"
    return Node(f"{socket.gethostname()}-{settings.port}-{secrets.token_hex(3)}", url.rstrip("/"))


def _json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


# -- wiring --------------------------------------------------------------------------------------
def setup(app: web.Application) -> None:
    """Install the cluster on ``app`` (after the operator routes: it needs their service)."""
    app.middlewares.append(cluster_middleware)
    app.cleanup_ctx.append(_cluster_ctx)


async def _cluster_ctx(app: web.Application) -> AsyncIterator[None]:
    from avatar.server.app import SESSIONS, SETTINGS

    settings = app[SETTINGS]
    node = node_for(settings)
    if not settings.redis_url:
        app[CLUSTER] = LocalCluster(node)
        yield
        return

    from avatar.cluster.comments import TOPIC as COMMENTS_TOPIC
    from avatar.cluster.comments import RedisCommentStore
    from avatar.cluster.limits import SharedLoginLimiter
    from avatar.cluster.redis_cluster import RedisCluster
    from avatar.cluster.tokens import RedisTokenBook
    from avatar.server.operator_routes import OPERATORS

    ops = app[OPERATORS]
    desk = ops.desk

    def entry(summary: dict[str, Any]) -> dict[str, Any]:
        """The registry's summary: the desk's, and whether it is a call or a broadcast stage."""
        seat = desk.seats.get(str(summary.get("session_id")))
        return {**summary, "mode": getattr(seat.session, "mode", "call") if seat is not None else "call"}

    cluster = RedisCluster(
        settings.redis_url,
        node,
        secret=settings.cluster_secret,
        local_sessions=lambda: {sid: entry(desk.summary(sid)) for sid in list(desk.seats)},
        held_locks=lambda: {sid: seat.holder for sid, seat in desk.seats.items() if seat.holder is not None},
    )
    await cluster.start()  # ClusterUnavailable stops the start with its message
    app[CLUSTER] = cluster
    app[PEER_HTTP] = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=FORWARD_TIMEOUT))

    # Tokens: from the data directory's file to Redis, so every process accepts them.
    local_book = ops.tokens
    ops.tokens = RedisTokenBook(cluster, settings.operator_token_ttl)
    local_book.close()

    # Operator events: out to the other processes, and theirs in to our sockets.
    def relay(message: dict[str, Any], operator: str | None) -> None:
        cluster.publish("hub", {"message": message, "operator": operator})
        kind = message.get("type")
        if kind == "session" and isinstance(message.get("session"), dict):
            summary = message["session"]
            cluster.track(str(summary["session_id"]), entry(summary))
        elif kind == "session_closed":
            cluster.untrack(str(message["session_id"]))
        elif kind == "event" and message.get("kind") == "handback" and isinstance(message.get("operator"), str):
            # Handback, sign-out, grace expired: the operator let go, so does the lock.
            operator_name, session_id = message["operator"], str(message["session_id"])
            cluster.enqueue(lambda r: _unlock_write(cluster, session_id, operator_name))

    def deliver(envelope: dict[str, Any]) -> None:
        message, operator = envelope.get("message"), envelope.get("operator")
        if isinstance(message, dict):
            ops.hub.deliver(message, operator if isinstance(operator, str) else None)

    ops.hub.relays.append(relay)
    cluster.subscribe("hub", deliver)
    for sid in list(desk.seats):  # sessions that started before the cluster joined
        cluster.track(sid, entry(desk.summary(sid)))

    # Sign-in attempts: counted in Redis too, with the local limiter's rule.
    app[LOGIN_LIMITER] = SharedLoginLimiter(cluster, ops.limiter.max_failures, ops.limiter.window)

    # Broadcast comments: queues and moderation state in Redis; a comment queued on another
    # process wakes the owner's show.
    from avatar.broadcast.show_routes import SHOWS
    from avatar.broadcast.stages import STAGES

    if SHOWS in app:
        shows, stages = app[SHOWS], app[STAGES]
        shows.store = RedisCommentStore(cluster)

        def queued(message: dict[str, Any]) -> None:
            record = stages.get(str(message.get("stage_id")))
            if record is not None:
                shows.for_session(record.session).show.queued()

        cluster.subscribe(COMMENTS_TOPIC, queued)

    # Takeover locks: the owner is the authority for its sessions; the lock in Redis makes the
    # holder visible to every process and refuses a second operator anywhere.
    async def lock(session_id: str, operator: str) -> str:
        try:
            holder = await cluster.lock(session_id, operator)
            seat = desk.seats.get(session_id)
            if holder != operator and (seat is None or seat.holder != holder):
                # A stale lock (a release lost while Redis was away): this process owns the
                # session and says nobody holds it.
                await cluster.unlock(session_id, holder)
                holder = await cluster.lock(session_id, operator)
            return holder
        except ClusterUnavailable as exc:
            log.warning("takeover of %s without the shared lock (%s): this process owns it", session_id, exc)
            return operator

    desk.lock = lock
    presence = Presence(cluster, ops.hub)
    try:
        yield
    finally:
        # Close this process's sessions while the cluster still hears about it, then leave.
        await app[SESSIONS].close_all()
        await presence.close()
        desk.lock = None
        with contextlib.suppress(ValueError):
            ops.hub.relays.remove(relay)
        await cluster.close()
        await app[PEER_HTTP].close()


class Presence:
    """Which operators have a desk open on which process. Each process announces its own (on
    every change of its hub's presence, and every ``interval`` seconds); a process not heard from
    for three intervals counts as gone. When an operator's presence changes anywhere, the hub's
    presence listeners run here too: the takeover desk starts (or cancels) the grace period of
    the sessions this process owns that they hold."""

    def __init__(self, cluster: Any, hub: Any, interval: float = PRESENCE_INTERVAL) -> None:
        self.cluster = cluster
        self.hub = hub
        self.interval = interval
        self.remote: dict[str, tuple[float, frozenset[str]]] = {}  # node -> (heard at, operators)
        self.status: dict[str, bool] = {}  # the presence the listeners were last told
        hub.elsewhere = self.elsewhere
        hub.on_presence.append(self._local_change)
        cluster.subscribe(PRESENCE_TOPIC, self._heard)
        self.task = asyncio.create_task(self._run(), name="cluster-presence")

    def elsewhere(self, operator: str) -> bool:
        limit = time.monotonic() - 3 * self.interval
        return any(operator in names for heard, names in self.remote.values() if heard >= limit)

    def announce(self) -> None:
        self.cluster.publish(PRESENCE_TOPIC, {"node": self.cluster.node.id, "online": self.hub.operators_online()})

    def _local_change(self, operator: str, online: bool) -> None:
        self.status[operator] = online
        self.announce()

    def _heard(self, message: dict[str, Any]) -> None:
        node, names = message.get("node"), message.get("online")
        if isinstance(node, str) and isinstance(names, list):
            self.remote[node] = (time.monotonic(), frozenset(n for n in names if isinstance(n, str)))
            self.reconcile()

    def reconcile(self) -> None:
        limit = time.monotonic() - 3 * self.interval
        for node in [n for n, (heard, _) in self.remote.items() if heard < limit]:
            del self.remote[node]  # that process is gone: its desks with it
        seen = set(self.status).union(*(names for _, names in self.remote.values()))
        for operator in sorted(seen):
            online = self.hub.online(operator)
            if self.status.get(operator, False) != online:
                self.status[operator] = online
                for listener in list(self.hub.on_presence):
                    if listener != self._local_change:
                        listener(operator, online)

    async def _run(self) -> None:
        while True:
            self.announce()
            self.reconcile()
            await asyncio.sleep(self.interval)

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        self.hub.elsewhere = None
        with contextlib.suppress(ValueError):
            self.hub.on_presence.remove(self._local_change)
        self.cluster.publish(PRESENCE_TOPIC, {"node": self.cluster.node.id, "online": []})


async def _unlock_write(cluster: Any, session_id: str, operator: str) -> None:
    await cluster.unlock(session_id, operator)


# -- the operators' merged view ------------------------------------------------------------------
def _urgency(item: dict[str, Any], now: float) -> tuple[int, float]:
    """The desk's order (avatar.operator.takeover.TakeoverDesk.summaries) over every process:
    waiting (longest first), then held by operators, then the AI's (most upset first)."""
    control = item.get("control")
    if control == "waiting":
        since = item.get("waiting_since")
        return (0, -(now - since) if isinstance(since, (int, float)) else 0.0)
    return (1 if control == "operator" else 2, -float(item.get("emotion") or 0.0))


async def operator_view(
    app: web.Application, operator: str
) -> tuple[list[str], list[dict[str, Any]], str | None]:
    """What an operator's desk shows: the sessions ``operator`` holds and every live session of
    every process, most urgent first; and, when the list could only be this process's own (the
    shared registry is unreachable), why, else ``None``."""
    from avatar.server.operator_routes import OPERATORS

    desk = app[OPERATORS].desk
    sessions = desk.summaries()
    partial: str | None = None
    cluster = app.get(CLUSTER)
    if cluster is not None:
        try:
            remote = await cluster.sessions()
        except ClusterUnavailable as exc:
            log.warning("the session list shows this process only: %s", exc)
            partial = "this server's sessions only: the shared session registry is unreachable"
            remote = []
        if remote:
            now = time.time()
            for item in remote:
                if isinstance(item.get("waiting_since"), (int, float)):
                    item["waited"] = round(now - item["waiting_since"], 1)
            local_ids = {s["session_id"] for s in sessions}
            sessions = sorted(
                sessions + [s for s in remote if s.get("session_id") not in local_ids],
                key=lambda s: _urgency(s, now),
            )
    held = [str(s["session_id"]) for s in sessions if s.get("holder") == operator]
    return held, sessions, partial


# -- forwarding ------------------------------------------------------------------------------------
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def from_peers(request: web.Request, key: str) -> tuple[list[dict[str, Any]], list[str]]:
    """What every other live process answers to this request (``GET /api/sessions`` or
    ``/api/stages``): the items under ``key`` of their answers, and the processes that did not
    answer. Nothing when this process is alone, or when the request was itself sent by a peer
    (each process answers for its own)."""
    cluster = request.app.get(CLUSTER)
    if cluster is None or isinstance(cluster, LocalCluster) or request.headers.get(SECRET_HEADER) is not None:
        return [], []
    try:
        peers = await cluster.peers()
    except ClusterUnavailable as exc:
        log.warning("%s lists this process only: %s", request.path, exc)
        return [], ["redis"]
    answers = await asyncio.gather(*(_ask(request, cluster, peer) for peer in peers))
    items: list[dict[str, Any]] = []
    missing: list[str] = []
    for peer, answer in zip(peers, answers, strict=True):
        listed = answer.get(key) if isinstance(answer, dict) else None
        if isinstance(listed, list):
            items += [item for item in listed if isinstance(item, dict)]
        else:
            missing.append(peer.id)
    return items, missing


async def _ask(request: web.Request, cluster: Cluster, peer: Node) -> Any:
    """``peer``'s JSON answer to this request (a GET), or None."""
    headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "accept")}
    headers[SECRET_HEADER] = cluster.secret
    headers[VIA_HEADER] = cluster.node.id
    try:
        async with request.app[PEER_HTTP].get(peer.url + request.path_qs, headers=headers,
                                              timeout=aiohttp.ClientTimeout(total=LIST_TIMEOUT)) as resp:
            if resp.status != 200:
                log.warning("%s: %s answered %d", request.path, peer.id, resp.status)
                return None
            return await resp.json()
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        log.warning("%s: %s did not answer: %s", request.path, peer.id, exc)
        return None


async def _limited_login(request: web.Request, handler: Handler, limiter: SharedLoginLimiter) -> web.StreamResponse:
    """``POST /api/operator/login`` under the shared limiter (the route applies this process's
    own too): refused with 429 while the name or the address has too many recent failures on any
    process; a refused password counts everywhere, a success clears the name's count. Without
    Redis the route's own limiter is all there is."""
    try:
        body = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError):
        body = None
    name = body.get("name") if isinstance(body, dict) else None
    if not isinstance(name, str) or not name:
        return await handler(request)  # the route answers the 400
    address = request.remote or "?"
    try:
        wait = await limiter.retry_after(name, address)
    except ClusterUnavailable as exc:
        log.warning("sign-in of %r checked by this process's limiter only: %s", name[:64], exc)
        return await handler(request)
    if wait is not None:
        seconds = int(wait) + 1
        raise web.HTTPTooManyRequests(
            text=json.dumps({"error": f"too many failed sign-ins: try again in {seconds} s"}),
            content_type="application/json",
            headers={"Retry-After": str(seconds)},
        )
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status == 401:
            await _count(limiter.failed(name, address))
        raise
    if response.status == 401:
        await _count(limiter.failed(name, address))
    elif response.status == 200:
        await _count(limiter.succeeded(name))
    return response


async def _count(write: Awaitable[None]) -> None:
    try:
        await write
    except ClusterUnavailable as exc:
        log.warning("a sign-in attempt was not counted in Redis: %s", exc)


@web.middleware
async def cluster_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    cluster = request.app.get(CLUSTER)
    if cluster is None or isinstance(cluster, LocalCluster):
        return await handler(request)
    from avatar.cluster.tokens import RedisTokenBook
    from avatar.server.auth import bearer_token
    from avatar.server.operator_routes import OPERATORS

    peer_secret = request.headers.get(SECRET_HEADER)
    if peer_secret is not None and not hmac.compare_digest(peer_secret.encode(), cluster.secret.encode()):
        return _json_error(403, "invalid cluster secret")
    forwarded = peer_secret is not None
    tokens = request.app[OPERATORS].tokens if OPERATORS in request.app else None
    if not isinstance(tokens, RedisTokenBook):
        tokens = None
    token = bearer_token(request)
    if tokens is not None and token is not None and not _is_api_token(request, token):
        await tokens.prefetch(token)  # a sign-in made on another process a moment ago
    if not forwarded:
        forward = await _route_elsewhere(request, cluster)
        if forward is not None:
            return forward
    writes = tokens.writes if tokens is not None else 0
    limiter = request.app.get(LOGIN_LIMITER)
    if request.path == _LOGIN and request.method == "POST" and limiter is not None and not forwarded:
        response = await _limited_login(request, handler, limiter)
    else:
        try:
            response = await handler(request)
        except web.HTTPNotFound:
            if not request.get(_REGISTRY_DOWN):
                raise
            # Not here, and the registry that would say where it is cannot be asked: the session
            # may well be live on another process, so "no such session" would be a lie.
            return _json_error(503, "the shared session registry is unreachable; try again shortly")
    if tokens is not None and tokens.writes != writes:
        # A sign-in or sign-out is in Redis before it is answered, so the client may use (or
        # stop using) the token on any process at once. Bounded: Redis may be away.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(tokens.drain(), DRAIN_TIMEOUT)
    return response


def _is_api_token(request: web.Request, token: str) -> bool:
    from avatar.server.app import API_TOKEN

    return hmac.compare_digest(token.encode(), request.app[API_TOKEN].encode())


async def _route_elsewhere(request: web.Request, cluster: Cluster) -> web.StreamResponse | None:
    """The answer of the process owning the request's session, or None to answer it here."""
    from avatar.server.app import SESSIONS

    if request.path == _MULTI_SAY and request.method == "POST":
        return await _multi_say(request, cluster)
    if request.path == _LOGOUT and request.method == "POST":
        await _release_elsewhere(request, cluster)
        return None  # the route signs out and releases this process's sessions
    match = _SESSION_PATH.match(request.path)
    if match is None or request.app[SESSIONS].get(match.group(1)) is not None:
        return None
    if request.method == "POST" and _COMMENTS.match(request.path):
        return None  # queued here, in Redis, whoever owns the stage
    session_id = match.group(1)
    transcript = match.group(2) == "/transcript" and request.path.startswith("/api/sessions/")
    try:
        owner = await cluster.owner(session_id)
        if owner is None and transcript:
            # Ended (or never here): the transcript is in the store of the process it ran on.
            home = await cluster.home(session_id)
            if home is not None and home.rstrip("/") != cluster.node.url.rstrip("/"):
                answer = await forward(request, cluster, Node(home, home), None)
                if answer.status != 502:
                    return answer
                return None  # that process is gone: a shared data_dir may hold it here
    except ClusterUnavailable as exc:
        log.warning("cannot look up the owner of session %s: %s", session_id, exc)
        if transcript:
            request[_REGISTRY_DOWN] = True  # answered here if stored here; else 503, not "no session"
            return None  # the stored transcript may still be here
        return _json_error(503, "the shared session registry is unreachable; try again shortly")
    if owner is None or owner.id == cluster.node.id:
        return None
    return await forward(request, cluster, owner, await request.read() if request.can_read_body else None)


async def forward(
    request: web.Request, cluster: Cluster, owner: Node, body: bytes | None, path: str | None = None
) -> web.Response:
    """Send the request (or ``body`` to ``path``) to ``owner`` and relay its answer."""
    headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "content-type", "accept")}
    headers[SECRET_HEADER] = cluster.secret
    headers[VIA_HEADER] = cluster.node.id
    if request.remote:
        headers["X-Forwarded-For"] = request.remote
    url = owner.url + (path or request.path_qs)
    try:
        async with request.app[PEER_HTTP].request(request.method, url, data=body, headers=headers) as resp:
            payload = await resp.read()
            answer = web.Response(body=payload, status=resp.status)
            answer.headers["Content-Type"] = resp.headers.get("Content-Type", "application/json")
            for name in ("WWW-Authenticate", "Retry-After", "Allow"):
                if name in resp.headers:
                    answer.headers[name] = resp.headers[name]
            return answer
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.warning("forwarding %s %s to %s failed: %s", request.method, request.path, owner.url, exc)
        return _json_error(502, f"the server process that owns this session ({owner.id}) did not answer")


async def _multi_say(request: web.Request, cluster: Cluster) -> web.StreamResponse | None:
    """``POST /api/operator/say`` naming sessions of other processes: check that the operator
    holds every one of them (here in the desk, elsewhere in the shared locks), then send each
    owner its share. Anything this cannot judge (bad JSON, no token) is left to the route."""
    from avatar.server.app import SESSIONS
    from avatar.server.auth import bearer_token
    from avatar.server.operator_routes import OPERATORS

    try:
        body = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError):
        return None
    ids = body.get("sessions") if isinstance(body, dict) else None
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        return None
    ids = list(dict.fromkeys(ids))
    manager = request.app[SESSIONS]
    remote = [i for i in ids if manager.get(i) is None]
    token = bearer_token(request)
    operator = request.app[OPERATORS].tokens.resolve(token) if token else None
    if not remote or operator is None:
        return None
    desk = request.app[OPERATORS].desk
    groups: dict[Node, list[str]] = {}
    missing: list[str] = []
    not_held: list[str] = []
    try:
        for session_id in ids:
            if session_id in remote:
                owner = await cluster.owner(session_id)
                if owner is None:
                    missing.append(session_id)
                    continue
                if await cluster.holder(session_id) != operator:
                    not_held.append(session_id)
            else:
                owner = cluster.node
                seat = desk.seats.get(session_id)
                if seat is None or seat.holder != operator:
                    not_held.append(session_id)
            groups.setdefault(owner, []).append(session_id)
    except ClusterUnavailable:
        return _json_error(503, "the shared session registry is unreachable; try again shortly")
    if missing:
        return _json_error(404, f"no live session {', '.join(missing)}")
    if not_held:
        return _json_error(409, f"operator {operator!r} does not hold {', '.join(not_held)}")
    status = "queued"
    for owner, share in groups.items():
        answer = await forward(request, cluster, owner, json.dumps({**body, "sessions": share}).encode(), _MULTI_SAY)
        if answer.status != 200:
            return answer
        status = json.loads(answer.body if isinstance(answer.body, bytes) else b"{}").get("status", status)
    return web.json_response({"status": status, "sessions": ids})


async def _release_elsewhere(request: web.Request, cluster: Cluster) -> None:
    """Signing out hands back what the operator holds on every process: the route releases this
    process's sessions; the others' are handed back here first, while the token is still valid."""
    from avatar.server.auth import bearer_token
    from avatar.server.operator_routes import OPERATORS

    token = bearer_token(request)
    operator = request.app[OPERATORS].tokens.resolve(token) if token else None
    if operator is None:
        return
    try:
        for summary in await cluster.sessions():
            session_id = str(summary["session_id"])
            # The takeover lock is written before a takeover is answered; the listed summary
            # follows a moment later, so a sign-out right after a takeover must ask the lock.
            if summary.get("holder") != operator and await cluster.holder(session_id) != operator:
                continue
            owner = await cluster.owner(session_id)
            if owner is not None and owner.id != cluster.node.id:
                answer = await forward(request, cluster, owner, b"", f"/api/sessions/{session_id}/handback")
                if answer.status != 200:
                    log.warning("sign-out of %s: %s did not hand back %s (%d)", operator, owner.id, session_id,
                                answer.status)
    except ClusterUnavailable as exc:
        log.warning("sign-out of %s: the sessions held on other processes stay held until their grace ends: %s",
                    operator, exc)
