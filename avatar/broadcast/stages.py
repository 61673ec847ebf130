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

Stages survive a restart: each is stored (id, avatar, driver, view key, creation time) when it is
made, and marked ended when it ends while the server runs (``DELETE /api/stages/{id}``, the
session API, an operator). A stage closed by the server shutting down is not ended: the next start
brings it back with the same id and view key (``restore``), so an OBS source showing
``/overlay.html?stage=ID&key=KEY`` reconnects to it. Its show script, comments queue and RTMP
outputs are not brought back.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from avatar.rtc.fanout import StageFanout
from avatar.server.sessions import SessionManager
from avatar.session import Driver, Session
from avatar.store import StageRow, Store, StoreError

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

    def __init__(
        self,
        manager: SessionManager,
        max_stages: int = MAX_STAGES,
        max_viewers: int = MAX_VIEWERS,
        store: Store | None = None,
    ) -> None:
        self.manager = manager
        self.max_stages = max_stages
        self.max_viewers = max_viewers
        self.stages: dict[str, BroadcastStage] = {}
        self.store = store  # None: stages are not kept across restarts
        # Set when the server starts shutting down: the stages it closes then are not ended.
        self.shutting_down = False
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
        record = await self._open(avatar, driver, None, secrets.token_urlsafe(24), time.time())
        if self.store is not None:
            row = StageRow(record.id, avatar, driver, record.view_key, record.created)
            try:
                # Stored before the 201: a stage its creator was told about comes back after a crash.
                await asyncio.wrap_future(self.store.add_stage(row))
            except StoreError:
                await self.manager.close(record.id)
                await self._drain_closing()
                raise
        log.info("broadcast stage %s created (avatar %s, driver %s)", record.id, avatar, driver)
        return record

    async def _open(
        self, avatar: str, driver: str, stage_id: str | None, view_key: str, created: float
    ) -> BroadcastStage:
        """Make, register and list a stage (``ServerFull`` before it is listed)."""
        stage = await self.manager.make_stage(avatar)
        session = self.manager.make_session(avatar, stage, session_id=stage_id)
        if driver != "brain":
            # Lines come from a script player or an operator; the brain driver stays for "brain".
            quiet: Driver = StageDriver(driver)
            session.driver = quiet
        session.mode = "broadcast"
        record = BroadcastStage(session=session, driver=driver, view_key=view_key, created=created)
        self.manager.add(session)  # ServerFull before the stage is listed
        self.stages[session.id] = record
        return record

    async def restore(
        self, live_elsewhere: Callable[[str], Awaitable[bool]] | None = None
    ) -> list[BroadcastStage]:
        """Bring back the stored stages that were on air when the server last stopped, with their
        ids and view keys. One that cannot come back now (its avatar is gone, ``max_stages`` or
        ``max_sessions`` reached, its art fails to load) is skipped with a warning and stays stored,
        so a later start with the avatar back or more room brings it back. ``live_elsewhere(id)``
        says whether another live process (sharing this data dir) has the stage on air: such a
        stage is left to it."""
        from avatar.render.catalog import UnknownAvatar
        from avatar.server.sessions import ServerFull

        if self.store is None:
            return []
        try:
            rows = await asyncio.to_thread(self.store.live_stages)
        except StoreError as exc:
            log.error("broadcast stages not brought back: %s", exc)
            return []
        back: list[BroadcastStage] = []
        for row in rows:
            if row.id in self.stages:
                continue
            if live_elsewhere is not None:
                try:
                    if await live_elsewhere(row.id):
                        log.info("broadcast stage %s is on air on another process: not brought back here", row.id)
                        continue
                except Exception as exc:  # a second copy of a stage is worse than one left off
                    log.warning("broadcast stage %s not brought back: cannot tell where it is on air (%s)", row.id, exc)
                    continue
            if len(self.stages) >= self.max_stages:
                log.warning(
                    "broadcast stage %s not brought back: the server has its maximum of %d stages",
                    row.id,
                    self.max_stages,
                )
                continue
            if row.driver not in DRIVERS:
                log.warning("broadcast stage %s not brought back: unknown driver %r", row.id, row.driver)
                continue
            try:
                self.manager.engines.catalog.get(row.avatar)
                record = await self._open(row.avatar, row.driver, row.id, row.view_key, row.created)
            except UnknownAvatar:
                log.warning("broadcast stage %s not brought back: its avatar %r no longer exists", row.id, row.avatar)
                continue
            except ServerFull as exc:
                log.warning("broadcast stage %s not brought back: %s", row.id, exc)
                continue
            except Exception as exc:  # one stage's broken art must not stop the server or the others
                log.warning("broadcast stage %s not brought back: %s", row.id, exc)
                continue
            back.append(record)
        if back:
            log.info(
                "broadcast stages back after the restart (show scripts and RTMP outputs are not): %s",
                ", ".join(f"{r.id} (avatar {r.session.avatar}, driver {r.driver})" for r in back),
            )
        return back

    async def end_stored(self, stage_id: str) -> bool:
        """End a stored stage that is not on air here, so it no longer comes back at start;
        whether there was one to end. Raises ``StoreError``."""
        if self.store is None or stage_id in self.stages:
            return False
        ended: bool = await asyncio.wrap_future(self.store.end_stage(stage_id))
        return ended

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
        if self.store is not None and not self.shutting_down:
            # Writes commit in order: once this one is, so is the end _session_ended stored (and
            # should that one have failed, this stores it). StoreError: the stage is closed but
            # may come back after a restart.
            await asyncio.wrap_future(self.store.end_stage(stage_id))
        return True

    def _session_ended(self, session: Session) -> None:
        record = self.stages.pop(session.id, None)
        if record is None:
            return
        if self.store is not None and not self.shutting_down:
            # Ended while the server runs (DELETE, the session API, an operator): it stays ended.
            def stored(done: Future[bool]) -> None:
                if done.exception() is not None:
                    log.error("broadcast stage %s: its end was not stored: %s", session.id, done.exception())

            self.store.end_stage(session.id).add_done_callback(stored)
        if record.media is None:
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
