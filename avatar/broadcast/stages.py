"""Broadcast stages: an avatar on air with no customer, watched by any number of viewers.

A broadcast stage IS an ``avatar.session.Session`` with ``mode = "broadcast"`` and no customer
peer, registered in the ``SessionManager``: the operator desk lists it and takes it over through
the same takeover panel, and ``/api/sessions/{id}/say|interrupt`` work on it. The stage id is the
session id.

For other features (comments, show scripts, RTMP out) the accessor is
``StageDirectory.session(app, stage_id) -> Session`` (``UnknownStage`` when there is none);
speak with ``session.say(...)``, stop with ``session.interrupt()``, read ``session.stage``.

Each stage has an unguessable ``view_key``: watching (``POST /api/stages/{id}/offer``) needs it
or the API token, so knowing a stage id is not enough to watch it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from avatar.rtc.fanout import StageFanout
from avatar.server.sessions import SessionManager
from avatar.session import Driver, Session

log = logging.getLogger(__name__)

#: Who decides what a stage says: the AI brain, a show script, or an operator.
DRIVERS = ("brain", "script", "operator")
#: Default cap on stages per server (each also counts against ``max_sessions``).
MAX_STAGES = 8
#: Default cap on viewers per stage (bench/bench_viewers.py measures what a machine holds).
MAX_VIEWERS = 200


class UnknownStage(KeyError):
    """No live broadcast stage with that id."""


class StageDriver:
    """The driver of a stage that a show script or an operator drives: there is no customer to
    answer, so customer text (there is none on a broadcast stage) is ignored. Lines come from the
    script player or the operator through ``session.say``."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def on_customer_text(self, session: Session, text: str) -> None:
        log.info("stage %s (%s driver): ignoring customer text", session.id, self.name)


@dataclass
class BroadcastStage:
    """The directory's record of one broadcast stage."""

    session: Session
    driver: str  # as asked for: "brain", "script" or "operator"
    view_key: str
    created: float = field(default_factory=time.time)
    media: StageFanout | None = None  # the shared encoders and viewers, once the first viewer joins

    @property
    def id(self) -> str:
        return self.session.id

    def key_matches(self, key: str | None) -> bool:
        return key is not None and hmac.compare_digest(key.encode(), self.view_key.encode())

    def describe(self) -> dict[str, Any]:
        s = self.session
        return {
            "stage_id": s.id,
            "avatar": s.avatar,
            "driver": self.driver,
            "active_driver": s.driver.name,  # "operator" while an operator holds the stage
            "state": s.state,
            "created": self.created,
            "view_key": self.view_key,
            "overlay_url": f"/overlay.html?stage={s.id}&key={self.view_key}",
            "watch_url": f"/watch.html?stage={s.id}&key={self.view_key}",
            "viewers": self.media.viewer_count() if self.media is not None else 0,
            # Per feed (audio, main, overlay): frames read from the stage and sent, subscribers,
            # and per codec frames encoded and keyframes: one encode per frame, whatever the viewers.
            "feeds": self.media.stats() if self.media is not None else {},
        }


class StageDirectory:
    """The live broadcast stages of one server (on the app under ``STAGES``)."""

    def __init__(self, manager: SessionManager, max_stages: int = MAX_STAGES, max_viewers: int = MAX_VIEWERS) -> None:
        self.manager = manager
        self.max_stages = max_stages
        self.max_viewers = max_viewers
        self.stages: dict[str, BroadcastStage] = {}
        self._closing: set[asyncio.Task[Any]] = set()
        manager.on_session_end.append(self._session_ended)

    @staticmethod
    def session(app: web.Application, stage_id: str) -> Session:
        """The session of live stage ``stage_id`` on ``app``; ``UnknownStage`` when there is none.
        The accessor for other broadcast features."""
        stage = app[STAGES].stages.get(stage_id)
        if stage is None:
            raise UnknownStage(stage_id)
        return stage.session

    def get(self, stage_id: str) -> BroadcastStage | None:
        return self.stages.get(stage_id)

    async def create(self, avatar: str, driver: str) -> BroadcastStage:
        """A new stage for ``avatar`` driven by ``driver``. Raises ``ValueError`` for an unknown
        driver, ``avatar.render.catalog.UnknownAvatar``, ``ServerFull`` (``max_stages`` or
        ``max_sessions`` reached)."""
        from avatar.server.sessions import ServerFull

        if driver not in DRIVERS:
            raise ValueError(f"'driver' must be one of {', '.join(DRIVERS)}")
        if len(self.stages) >= self.max_stages:
            raise ServerFull(f"the server has its maximum of {self.max_stages} broadcast stages")
        self.manager.engines.catalog.get(avatar)  # UnknownAvatar before any work
        stage = await self.manager.make_stage(avatar)
        session = self.manager.make_session(avatar, stage)
        if driver != "brain":
            # Lines come from a script player or an operator; the brain driver stays for "brain".
            quiet: Driver = StageDriver(driver)
            session.driver = quiet
        session.mode = "broadcast"
        record = BroadcastStage(session=session, driver=driver, view_key=secrets.token_urlsafe(24))
        self.manager.add(session)  # ServerFull before the stage is listed
        self.stages[session.id] = record
        log.info("broadcast stage %s created (avatar %s, driver %s)", session.id, avatar, driver)
        return record

    def fanout(self, record: BroadcastStage) -> StageFanout:
        """The stage's viewers and shared encoders (made when the first viewer arrives)."""
        if record.media is None:
            settings = self.manager.settings
            record.media = StageFanout(
                record.session.stage,
                settings.ice_servers,
                video_codec=settings.video_codec,
                render_pool=self.manager.engines.render_pool,
                max_viewers=self.max_viewers,
            )
            record.session.add_sink(record.media.publish)  # captions and state for viewers' pages
        record.media.max_viewers = self.max_viewers
        return record.media

    async def delete(self, stage_id: str) -> bool:
        """End a stage: its viewers are disconnected and its session closed."""
        if stage_id not in self.stages:
            return False
        await self.manager.close(stage_id)  # _session_ended forgets it and closes the viewers
        await self._drain_closing()
        return True

    def _session_ended(self, session: Session) -> None:
        record = self.stages.pop(session.id, None)
        if record is None or record.media is None:
            return
        task = asyncio.get_running_loop().create_task(record.media.close(), name=f"stage-media-close:{session.id}")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _drain_closing(self) -> None:
        if self._closing:
            await asyncio.gather(*list(self._closing), return_exceptions=True)

    async def close_all(self) -> None:
        for stage_id in list(self.stages):
            with contextlib.suppress(Exception):
                await self.delete(stage_id)
        await self._drain_closing()


STAGES = web.AppKey("broadcast_stages", StageDirectory)
