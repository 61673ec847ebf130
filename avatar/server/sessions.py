"""The registry of live sessions and the WebRTC offer/answer that creates one."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiortc import RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamTrack

from avatar.clock import MediaClock
from avatar.config import Settings
from avatar.drivers import make_driver
from avatar.rtc.link import watch_link
from avatar.rtc.peer import (
    UnusableOffer,
    answer_offer,
    close_peer,
    drain,
    make_peer_connection,
    prefer_video_codec,
)
from avatar.rtc.tracks import StageAudioTrack, StageVideoTrack
from avatar.server.engines import Engines
from avatar.server.memory import MemoryTrimmer
from avatar.server.security import rate_limited
from avatar.session import Driver, Session, TTSSpeechSource
from avatar.speaker import Speaker
from avatar.stage import Stage

log = logging.getLogger(__name__)


class ServerFull(Exception):
    """No room for another session (``max_sessions``)."""


class BadOffer(UnusableOffer):
    """The SDP offer could not be used."""


@dataclass
class Peer:
    pc: RTCPeerConnection
    audio: StageAudioTrack
    video: StageVideoTrack
    channel: RTCDataChannel | None = None
    # The customer's microphone, relayed: the listener and any operator watching hear it.
    mic: MediaStreamTrack | None = None
    mic_relay: MediaRelay | None = None


def make_mouth_builder() -> Callable[..., Any]:
    from avatar.speech.lipsync import track_from_phonemes

    def build(phonemes: Any, duration: float, lang: str) -> Any:
        return track_from_phonemes(phonemes, duration, lang=lang)

    return build


def for_customer(message: dict[str, Any]) -> dict[str, Any]:
    """What the customer's page may see of a session event: whoever drives the avatar (the AI
    or an operator, by name), the customer sees only "avatar", so a takeover is invisible."""
    speaker = message.get("speaker")
    if speaker is not None and speaker != "customer":
        return {**message, "speaker": "avatar"}
    return message


class SessionManager:
    def __init__(
        self, engines: Engines, settings: Settings | None = None, driver_factory: Callable[[], Driver] | None = None
    ) -> None:
        self.engines = engines
        self.settings = settings or engines.settings
        self.sessions: dict[str, Session] = {}
        self.peers: dict[str, Peer] = {}
        self._pending = 0  # offers being answered count against the limit too
        self.driver_factory = driver_factory  # None: as configured (see avatar.drivers.make_driver)
        # Called with each session once it is live, and when it ends (the operator desk).
        self.on_session_start: list[Callable[[Session], None]] = []
        self.on_session_end: list[Callable[[Session], None]] = []
        self._mouth = make_mouth_builder()
        # Freed encoder and render memory goes back to the OS after sessions end (see memory.py).
        self.trimmer = MemoryTrimmer()

    def get(self, session_id: str) -> Session | None:
        return self.sessions.get(session_id)

    def add(self, session: Session) -> None:
        """Register a live session that has no customer peer (a broadcast stage): it counts
        against ``max_sessions`` (``ServerFull``), is started, and the start hooks (the operator
        desk) see it like any other. ``close`` ends it as usual."""
        if len(self.sessions) + self._pending >= self.settings.max_sessions:
            raise ServerFull(f"the server is full ({self.settings.max_sessions} sessions)")
        if session.id in self.sessions:
            raise ValueError(f"session {session.id!r} is already registered")
        self.sessions[session.id] = session
        session.start()
        for hook in list(self.on_session_start):
            hook(session)
        log.info("session %s started (%s, avatar %s, no peer)", session.id, session.mode, session.avatar)

    async def make_stage(self, avatar: str, clock: MediaClock | None = None) -> Stage:
        """A stage for ``avatar``. Loading art can take a moment the first time: off the loop."""
        from avatar.idle import IdleAnimator

        s = self.settings
        renderer = await asyncio.to_thread(self.engines.catalog.load, avatar, s.width, s.height)
        seed = secrets.randbits(31)  # each stage blinks and sways on its own schedule
        return Stage(renderer, clock or MediaClock(), IdleAnimator(seed), fps=s.fps, avatar=avatar)

    def make_session(self, avatar: str, stage: Stage, session_id: str | None = None) -> Session:
        """A session (not yet registered) for ``avatar`` on ``stage``; ``session_id`` keeps a
        known id (a broadcast stage brought back after a restart), else a new one is drawn."""
        source = TTSSpeechSource(self.engines.tts, avatar, self.settings.default_lang)

        def speaker_factory(stage: Stage, emit: Callable[[dict[str, Any]], None]) -> Speaker:
            return Speaker(stage, source, self._mouth, emit)

        driver = self.driver_factory() if self.driver_factory else make_driver(self.settings, self.engines)
        session = Session(stage, speaker_factory, driver, avatar, session_id=session_id)
        return session

    async def create_from_offer(
        self, sdp: str, sdp_type: str, avatar: str, mode: str = "call", customer_id: str | None = None
    ) -> tuple[Session, RTCSessionDescription]:
        """Answer a browser's offer with a new session. ``mode`` is "call" (a customer) or
        "mirror" (the peer's camera drives the avatar's face); ``customer_id`` is the bank's id
        for the customer, when the page passes one (stored with each utterance). Raises
        ``ServerFull``, ``BadOffer`` or ``avatar.render.catalog.UnknownAvatar``."""
        if len(self.sessions) + self._pending >= self.settings.max_sessions:
            raise ServerFull(f"the server is full ({self.settings.max_sessions} sessions)")
        self.engines.catalog.get(avatar)  # UnknownAvatar before any work
        self._pending += 1
        pc: RTCPeerConnection | None = None
        try:
            session = self.make_session(avatar, await self.make_stage(avatar))
            pc = make_peer_connection(self.settings.ice_servers)
            audio = StageAudioTrack(session.stage)
            video = StageVideoTrack(session.stage, self.engines.render_pool)
            peer = Peer(pc, audio, video)
            session.mode = mode
            session.customer_id = customer_id
            self._wire(session, peer)
            # The tracks' transceivers exist before the offer is applied: aiortc fixes an answer's
            # codecs while applying the offer, so the codec preference must already be there.
            pc.addTrack(audio)
            pc.addTrack(video)
            prefer_video_codec(pc, self.settings.video_codec)
            await answer_offer(pc, sdp, sdp_type, error=BadOffer)
        except BaseException:
            self._pending -= 1
            if pc is not None:
                await close_peer(pc)
            raise
        self._pending -= 1
        self.sessions[session.id] = session
        self.peers[session.id] = peer
        session.start()
        session.spawn(watch_link(session, pc), "link")  # the customer's receiver reports
        for hook in list(self.on_session_start):
            hook(session)
        log.info("session %s started (avatar %s)", session.id, avatar)
        local = pc.localDescription
        return session, local

    def _wire(self, session: Session, peer: Peer) -> None:
        pc = peer.pc

        def send(message: dict[str, Any]) -> None:
            channel = peer.channel
            if channel is not None and channel.readyState == "open":
                channel.send(json.dumps(for_customer(message), ensure_ascii=False))

        session.add_sink(send)

        @pc.on("datachannel")
        def on_datachannel(channel: RTCDataChannel) -> None:
            if channel.label != "events":
                return
            peer.channel = channel
            # channel_rate / channel_burst: a flood gets one error event and is dropped.
            handle = rate_limited(session.handle_message, session.emit, self.settings)

            @channel.on("message")
            def on_message(message: str | bytes) -> None:
                handle(message)

            send({"type": "state", "state": session.state})

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "video" and session.mode == "mirror":
                from avatar.face.puppet import FacePuppet
                from avatar.mirror import drive_from_track

                puppet = FacePuppet(self.engines.face_tracker(), mirror=True)  # moves like the self-view
                session.spawn(drive_from_track(track, session.stage, puppet, self.engines.render_pool), "mirror")
                return
            if track.kind == "audio" and session.mode == "call":
                from avatar.listener import listen, tighten_receive_buffer

                # The customer's microphone: heard for turns, partial transcripts and barge-in,
                # through a relay so that operators watching the session hear it too.
                tighten_receive_buffer(pc, track)  # before its first packet: heard 60 ms sooner
                peer.mic, peer.mic_relay = track, MediaRelay()
                session.spawn(listen(session, peer.mic_relay.subscribe(track), self.engines), "listen")
                return
            # Any other inbound media: consumed so nothing queues up in aiortc.
            session.spawn(drain(track), f"drain-{track.kind}")

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                await self.close(session.id)

    def customer_audio(self, session_id: str) -> MediaStreamTrack | None:
        """A new feed of session ``session_id``'s customer microphone (None without one). The
        feed keeps only the newest frame, so a consumer that stops reading holds no backlog;
        ``stop()`` it when done."""
        peer = self.peers.get(session_id)
        if peer is None or peer.mic is None or peer.mic_relay is None or peer.mic.readyState != "live":
            return None
        return peer.mic_relay.subscribe(peer.mic, buffered=False)

    async def close(self, session_id: str) -> bool:
        session = self.sessions.pop(session_id, None)
        peer = self.peers.pop(session_id, None)
        if session is None:
            return False
        await session.close()
        for hook in list(self.on_session_end):
            hook(session)
        if peer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(peer.pc.close(), 5.0)
        log.info("session %s closed", session_id)
        self.trimmer.schedule()
        return True

    async def close_all(self) -> None:
        await asyncio.gather(*(self.close(sid) for sid in list(self.sessions)), return_exceptions=True)
        await self.trimmer.aclose()
