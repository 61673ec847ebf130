"""Live comments, show scripts and RTMP outputs of broadcast stages (registered by ``setup(app)``).

| route | auth |
|---|---|
| ``POST /api/stages/{id}/comments`` ``{"user", "text"}`` | API token or operator |
| ``GET /api/stages/{id}/comments`` | API token or operator |
| ``POST /api/stages/{id}/comments/{cid}/pick`` / ``skip`` / ``answer`` ``{"text"}`` | operator |
| ``POST /api/stages/{id}/script`` ``{"script"}``, ``GET``, ``DELETE``; ``.../script/pause``, ``resume`` | API token or operator |
| ``POST /api/stages/{id}/outputs`` ``{"url"}``, ``GET``; ``DELETE /api/stages/{id}/outputs/{oid}`` | API token or operator |

A comment that moderation rejects is answered ``200 {"queued": false, "reason", "message"}``:
the platform bridge did nothing wrong, and the reason is a stable code it can show or count.
Malformed input is a 400, as everywhere.

Each stage's programme (``StageShow``), moderation filter and outputs live in a ``ShowDirectory``
on the app, made on first use and dropped when the stage ends (its tasks belong to the stage's
session, so they stop with it). The comment queues and moderation state come from the
directory's ``CommentStore``: memory, or Redis when processes serve together, in which case a
comment for a stage of another process is moderated and queued by the process that receives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from avatar.broadcast.comments import (
    MAX_COMMENT_CHARS,
    MAX_USER_CHARS,
    Answerer,
    Comment,
    CommentQueue,
    CommentStore,
    MemoryCommentStore,
    QueueUnavailable,
    answerer_for,
    make_comment,
)
from avatar.broadcast.moderation import Moderator
from avatar.broadcast.rtmp import BadOutputUrl, RtmpOutput
from avatar.broadcast.script import ScriptError, StageShow, load_script
from avatar.broadcast.stages import STAGES
from avatar.server.app import ENGINES, SESSIONS, SETTINGS
from avatar.session import Session

log = logging.getLogger(__name__)

MAX_OUTPUTS = 4  # per stage: each is a render and an H.264 encode per frame


@dataclass
class StageExtras:
    show: StageShow
    moderator: Moderator
    outputs: dict[str, RtmpOutput] = field(default_factory=dict)


class ShowDirectory:
    """Per-stage programme, moderation and outputs. Comment queues and moderation state come
    from ``store`` (memory; Redis when processes serve together: ``avatar.cluster`` replaces it)."""

    def __init__(self, answerer: Answerer, publish: Any = None, store: CommentStore | None = None) -> None:
        self.answerer = answerer
        self.publish = publish  # the operators' hub ``publish``, when there is one
        self.store: CommentStore = store or MemoryCommentStore()
        self.stages: dict[str, StageExtras] = {}
        # The operators' panel is told the latest programme: one telling at a time per stage,
        # repeated while changes came in meanwhile (describing may wait for a shared queue).
        self._dirty: set[str] = set()
        self._telling: dict[str, asyncio.Task[None]] = {}

    def for_session(self, session: Session) -> StageExtras:
        extras = self.stages.get(session.id)
        if extras is None:
            show = StageShow(session, self.store.queue(session.id), self.answerer, on_change=self._changed)
            extras = StageExtras(show=show, moderator=self.store.moderator(session.id))
            self.stages[session.id] = extras
            show.start()
        return extras

    def _changed(self, show: StageShow) -> None:
        if self.publish is None:
            return
        stage_id = show.session.id
        self._dirty.add(stage_id)
        if stage_id not in self._telling:
            task = asyncio.get_running_loop().create_task(self._tell(show), name=f"stage-comments:{stage_id}")
            self._telling[stage_id] = task
            task.add_done_callback(lambda _: self._telling.pop(stage_id, None))

    async def _tell(self, show: StageShow) -> None:
        stage_id = show.session.id
        while stage_id in self._dirty and self.publish is not None:
            self._dirty.discard(stage_id)
            try:
                described = await show.describe()
            except QueueUnavailable as exc:
                log.warning("stage %s: the panel is not told about comments (%s)", stage_id, exc)
                return
            self.publish({"type": "comments", **described})

    async def forget(self, session_id: str) -> None:
        extras = self.stages.pop(session_id, None)
        self._dirty.discard(session_id)
        telling = self._telling.pop(session_id, None)
        if telling is not None:
            telling.cancel()
        if extras is None:
            return
        for output in list(extras.outputs.values()):
            await output.close()
        await extras.show.close()
        try:
            await extras.show.queue.clear()
        except QueueUnavailable as exc:
            log.info("stage %s ended; its shared comment queue expires on its own (%s)", session_id, exc)

    async def close_all(self) -> None:
        for session_id in list(self.stages):
            await self.forget(session_id)


SHOWS = web.AppKey("broadcast_shows", ShowDirectory)
routes = web.RouteTableDef()


# -- helpers --------------------------------------------------------------------------------------------------
def _manager(request: web.Request) -> str:
    from avatar.broadcast.routes import authorize_manager

    return authorize_manager(request)


def _operator(request: web.Request) -> str:
    from avatar.server.operator_routes import OPERATORS, operator_of

    if OPERATORS not in request.app:
        raise web.HTTPNotFound(text="the operator desk is not enabled on this server")
    return operator_of(request)


def _extras(request: web.Request) -> StageExtras:
    stage_id = request.match_info["stage_id"]
    record = request.app[STAGES].get(stage_id)
    if record is None:
        raise web.HTTPNotFound(text=f"no live broadcast stage {stage_id!r}")
    return request.app[SHOWS].for_session(record.session)


async def _body(request: web.Request) -> dict[str, Any]:
    from avatar.server.routes import read_json_object

    return await read_json_object(request)


def _string(body: dict[str, Any], name: str, limit: int) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value.strip():
        raise web.HTTPBadRequest(text=f"'{name}' must be a non-empty string")
    if len(value) > limit:
        raise web.HTTPBadRequest(text=f"'{name}' is longer than {limit} characters")
    return value.strip()


def _dumps(obj: Any) -> str:
    import json

    return json.dumps(obj, ensure_ascii=False)


def _queue_unavailable(exc: QueueUnavailable) -> web.HTTPServiceUnavailable:
    return web.HTTPServiceUnavailable(text=f"the comment queue is unreachable; try again shortly ({exc})",
                                      headers={"Retry-After": "5"})


# -- comments ------------------------------------------------------------------------------------------------
@routes.post("/api/stages/{stage_id}/comments")
async def post_comment(request: web.Request) -> web.Response:
    """Moderate and queue a comment. The stage may live on another process (cluster mode): the
    comment is then moderated and queued here, in the shared store, and its owner is told."""
    _manager(request)
    stage_id = request.match_info["stage_id"]
    directory = request.app[SHOWS]
    record = request.app[STAGES].get(stage_id)
    try:
        if record is not None:
            extras = directory.for_session(record.session)
            moderator, queue, show = extras.moderator, extras.show.queue, extras.show
        elif await directory.store.remote_stage(stage_id):
            moderator, queue, show = directory.store.moderator(stage_id), directory.store.queue(stage_id), None
        else:
            raise web.HTTPNotFound(text=f"no live broadcast stage {stage_id!r}")
        body = await _body(request)
        user = _string(body, "user", MAX_USER_CHARS)
        text = _string(body, "text", MAX_COMMENT_CHARS)
        verdict = await moderator.check(user, text)
        if not verdict.accepted:
            log.info("stage %s: comment rejected (%s)", stage_id, verdict.reason)
            return web.json_response(verdict.to_dict(), dumps=_dumps)
        comment = make_comment(await queue.next_id(), user, text)
        position = await (show.push(comment) if show is not None else _push_remote(directory, queue, stage_id, comment))
    except QueueUnavailable as exc:
        raise _queue_unavailable(exc) from exc
    if position is None:
        return web.json_response(
            {"queued": False, "reason": "queue_full", "message": "too many comments are waiting on this stage"}
        )
    return web.json_response({"queued": True, "comment": comment.to_dict(), "position": position}, status=202,
                             dumps=_dumps)


async def _push_remote(directory: ShowDirectory, queue: CommentQueue, stage_id: str, comment: Comment) -> int | None:
    """Queue ``comment`` for a stage of another process (its position counts the shared queue
    only: comments an operator picked there are not known here) and tell the owner."""
    position = await queue.push(comment)
    if position is not None:
        directory.store.queued(stage_id)
    return position


@routes.get("/api/stages/{stage_id}/comments")
async def list_comments(request: web.Request) -> web.Response:
    _manager(request)
    try:
        return web.json_response(await _extras(request).show.describe(), dumps=_dumps)
    except QueueUnavailable as exc:
        raise _queue_unavailable(exc) from exc


@routes.post("/api/stages/{stage_id}/comments/{comment_id}/{action:pick|skip|answer}")
async def comment_action(request: web.Request) -> web.Response:
    operator = _operator(request)
    show = _extras(request).show
    comment_id = request.match_info["comment_id"]
    action = request.match_info["action"]
    try:
        if action == "pick":
            comment = await show.pick(comment_id)
        elif action == "skip":
            comment = await show.skip(comment_id, operator)
        else:
            from avatar.session import MAX_TEXT_CHARS

            text = _string(await _body(request), "text", MAX_TEXT_CHARS)
            comment = await show.answer_by_hand(comment_id, text, operator)
    except QueueUnavailable as exc:
        raise _queue_unavailable(exc) from exc
    if comment is None:
        raise web.HTTPNotFound(text=f"no waiting comment {comment_id!r} on this stage")
    status = {"pick": "next", "skip": "skipped", "answer": "answering"}[action]
    return web.json_response({"status": status, "comment": comment.to_dict(), "by": operator}, dumps=_dumps)


# -- scripts ------------------------------------------------------------------------------------------------------
@routes.post("/api/stages/{stage_id}/script")
async def play_script(request: web.Request) -> web.Response:
    _manager(request)
    show = _extras(request).show
    body = await _body(request)
    source = body.get("script")
    if not isinstance(source, str) or not source.strip():
        raise web.HTTPBadRequest(text="'script' must be a shipped show's name or the YAML text of a script")
    try:
        script = await asyncio.to_thread(load_script, source)
    except ScriptError as exc:
        return web.json_response({"error": f"invalid script: {exc}", "problems": exc.problems}, status=400,
                                 dumps=_dumps)
    show.play(script)
    return web.json_response(show.describe_script(), dumps=_dumps)


@routes.get("/api/stages/{stage_id}/script")
async def get_script(request: web.Request) -> web.Response:
    _manager(request)
    return web.json_response(_extras(request).show.describe_script(), dumps=_dumps)


@routes.post("/api/stages/{stage_id}/script/{action:pause|resume}")
async def script_control(request: web.Request) -> web.Response:
    _manager(request)
    show = _extras(request).show
    action = request.match_info["action"]
    done = show.pause_script("operator") if action == "pause" else show.resume_script()
    if not done:
        state = show.script_state
        raise web.HTTPConflict(text=f"cannot {action}: the script is {state if state != 'none' else 'not loaded'}")
    return web.json_response(show.describe_script(), dumps=_dumps)


@routes.delete("/api/stages/{stage_id}/script")
async def stop_script(request: web.Request) -> web.Response:
    _manager(request)
    show = _extras(request).show
    if not show.stop_script():
        raise web.HTTPNotFound(text="no script is playing on this stage")
    return web.json_response(show.describe_script(), dumps=_dumps)


# -- RTMP outputs ---------------------------------------------------------------------------------------------
@routes.post("/api/stages/{stage_id}/outputs")
async def add_output(request: web.Request) -> web.Response:
    _manager(request)
    extras = _extras(request)
    body = await _body(request)
    try:
        output = RtmpOutput(extras.show.session.stage, body.get("url"))  # type: ignore[arg-type]
    except BadOutputUrl as exc:
        raise web.HTTPBadRequest(text=str(exc)) from exc
    if len(extras.outputs) >= MAX_OUTPUTS:
        raise web.HTTPConflict(text=f"a stage has at most {MAX_OUTPUTS} outputs")
    if any(o.url == output.url for o in extras.outputs.values()):
        raise web.HTTPConflict(text="this stage is already pushed to that URL")
    extras.outputs[output.id] = output
    output.start(extras.show.session.spawn)
    return web.json_response(output.describe(), status=201, dumps=_dumps)


@routes.get("/api/stages/{stage_id}/outputs")
async def list_outputs(request: web.Request) -> web.Response:
    _manager(request)
    extras = _extras(request)
    return web.json_response({"outputs": [o.describe() for o in extras.outputs.values()]}, dumps=_dumps)


@routes.delete("/api/stages/{stage_id}/outputs/{output_id}")
async def delete_output(request: web.Request) -> web.Response:
    _manager(request)
    extras = _extras(request)
    output = extras.outputs.pop(request.match_info["output_id"], None)
    if output is None:
        raise web.HTTPNotFound(text=f"no output {request.match_info['output_id']!r} on this stage")
    await output.close()
    return web.json_response(output.describe(), dumps=_dumps)


# -- wiring ----------------------------------------------------------------------------------------------------
def setup(app: web.Application) -> None:
    """Register the routes (after ``avatar.broadcast.routes.setup``: the directory needs the stages)."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        from avatar.server.operator_routes import OPERATORS

        publish = app[OPERATORS].hub.publish if OPERATORS in app else None
        directory = ShowDirectory(answerer_for(app[SETTINGS], app[ENGINES]), publish)
        app[SHOWS] = directory
        closing: set[asyncio.Task[None]] = set()

        def ended(session: Session) -> None:
            if session.id in directory.stages:
                task = asyncio.get_running_loop().create_task(directory.forget(session.id))
                closing.add(task)
                task.add_done_callback(closing.discard)

        app[SESSIONS].on_session_end.append(ended)
        yield
        await directory.close_all()
        with contextlib.suppress(Exception):
            await asyncio.gather(*closing, return_exceptions=True)

    app.cleanup_ctx.append(ctx)
    app.add_routes(routes)
