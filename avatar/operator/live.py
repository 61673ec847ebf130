"""The operator's own WebRTC peers with a session: watching it, and driving it by voice or camera.

- **watch** (any signed-in operator): a receive-only peer that gets a second pair of stage
  tracks on the session's stage (stage reads are non-destructive, so the customer's stream is
  untouched) plus the customer's microphone, relayed from the customer's peer. The operator
  sees and hears what the customer does, and hears the customer.
- **drive** (the operator holding the session): a peer that *sends* the operator's
  microphone and/or webcam. The microphone becomes the avatar's voice with audio-driven
  lip-sync (``avatar.operator.voice``); the webcam drives the avatar's head pose, blinks and
  mouth through mediapipe landmarks (``avatar.face.puppet.FacePuppet`` via
  ``avatar.mirror.drive_from_track``).

One watch peer per (operator, session) and one drive peer per session: a new offer replaces
the old peer. Watch peers close with the session, when the operator signs out, or when the
browser closes them; drive peers also close when the operator lets go of the session
(handback, logout, grace period over).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from avatar.operator.takeover import TakeoverDesk, UnknownSession
from avatar.rtc.peer import UnusableOffer, answer_offer, drain, make_peer_connection, prefer_video_codec
from avatar.rtc.tracks import StageAudioTrack, StageVideoTrack

if TYPE_CHECKING:
    from avatar.server.engines import Engines
    from avatar.server.sessions import SessionManager
    from avatar.session import Session

log = logging.getLogger(__name__)

#: Watch peers one operator may have open at once (each costs a render and an encode per frame).
MAX_WATCHES_PER_OPERATOR = 8


class BadMediaOffer(UnusableOffer):
    """The operator's SDP offer could not be used (HTTP 400)."""


@dataclass(eq=False)
class MediaPeer:
    kind: str  # "watch" or "drive"
    session_id: str
    operator: str
    pc: RTCPeerConnection
    tracks: list[MediaStreamTrack] = field(default_factory=list)  # what we send (stopped on close)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)  # what consumes what we receive
    voice: Any = None  # the OperatorVoice while the microphone drives the avatar
    camera: bool = False  # whether a webcam drives the avatar's face
    closed: bool = False


class OperatorMedia:
    def __init__(self, manager: SessionManager, desk: TakeoverDesk, engines: Engines) -> None:
        self.manager = manager
        self.desk = desk
        self.engines = engines
        self.settings = manager.settings
        self.peers: list[MediaPeer] = []
        self._closing: set[asyncio.Task[None]] = set()
        desk.on_release.append(self._released)
        manager.on_session_end.append(self._session_ended)

    def _session(self, session_id: str) -> Session:
        session = self.manager.get(session_id)
        if session is None:
            raise UnknownSession(session_id)
        return session

    def find(self, kind: str, session_id: str, operator: str | None = None) -> list[MediaPeer]:
        return [
            p for p in self.peers
            if p.kind == kind and p.session_id == session_id and (operator is None or p.operator == operator)
        ]

    # -- watching ---------------------------------------------------------------------------------
    async def watch(self, session_id: str, operator: str, sdp: str, sdp_type: str) -> RTCSessionDescription:
        """Answer an operator's receive-only offer for session ``session_id``: the avatar's video and
        voice, and the customer's microphone (a second audio m-line, when the customer sends one)."""
        session = self._session(session_id)
        old = self.find("watch", session_id, operator)
        if sum(1 for p in self.peers if p.kind == "watch" and p.operator == operator and p not in old) \
                >= MAX_WATCHES_PER_OPERATOR:
            raise BadMediaOffer(f"at most {MAX_WATCHES_PER_OPERATOR} sessions watched at once: close one first")
        pc = make_peer_connection(self.settings.ice_servers)
        peer = MediaPeer("watch", session_id, operator, pc)
        peer.tracks = [StageAudioTrack(session.stage), StageVideoTrack(session.stage, self.engines.render_pool)]
        mic = self.manager.customer_audio(session_id)
        if mic is not None:
            peer.tracks.append(mic)
        for track in peer.tracks:
            pc.addTrack(track)
        prefer_video_codec(pc, self.settings.video_codec)

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            peer.tasks.append(session.spawn(drain(track), "watch-drain"))  # a watcher sends nothing we use

        answer = await self._answer(peer, sdp, sdp_type, need={"video", "audio"})
        for replaced in old:  # only once the new view works
            await self.close(replaced)
        return answer

    # -- driving ----------------------------------------------------------------------------------
    async def drive(self, session_id: str, operator: str, sdp: str, sdp_type: str) -> RTCSessionDescription:
        """Answer the holder's send-only offer: its audio track becomes the avatar's voice, its video
        track drives the avatar's face. Raises the desk's ``TakeoverError`` for a non-holder."""
        self.desk.require_holder(session_id, operator)
        session = self._session(session_id)
        for old in self.find("drive", session_id):
            await self.close(old)  # one microphone/camera drives a session at a time
        pc = make_peer_connection(self.settings.ice_servers)
        peer = MediaPeer("drive", session_id, operator, pc)

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio" and peer.voice is None:
                from avatar.operator.voice import OperatorVoice, recognizer_transcribe

                peer.voice = OperatorVoice(
                    session, operator, recognizer_transcribe(self.engines), executor=self.engines.listen_pool
                )
                peer.tasks.append(session.spawn(peer.voice.run(track), "operator-voice"))
            elif track.kind == "video" and not peer.camera:
                peer.camera = True
                peer.tasks.append(session.spawn(self._camera(session, peer, track), "operator-camera"))
            else:
                peer.tasks.append(session.spawn(drain(track), "drive-drain"))

        answer = await self._answer(peer, sdp, sdp_type, need=set())
        if peer.voice is None and not peer.camera:
            await self.close(peer)
            raise BadMediaOffer("the offer must send audio (voice mode) or video (camera mode)")
        return answer

    async def _camera(self, session: Session, peer: MediaPeer, track: MediaStreamTrack) -> None:
        from avatar.face.puppet import FacePuppet
        from avatar.mirror import drive_from_track

        try:
            tracker = await asyncio.to_thread(self.engines.face_tracker)
        except Exception as exc:  # mediapipe missing or broken: say so, keep the call going
            log.error("session %s: camera mode unavailable: %s", session.id, exc)
            self.desk.hub.publish(
                {"type": "error", "session_id": session.id, "message": f"camera mode is unavailable: {exc}"},
                operator=peer.operator,
            )
            await drain(track)
            return
        # Not mirrored: the avatar copies the operator (their left eye is the avatar's left eye).
        puppet = FacePuppet(tracker, mirror=False)
        await drive_from_track(track, session.stage, puppet, self.engines.render_pool)

    # -- shared --------------------------------------------------------------------------------------
    async def _answer(self, peer: MediaPeer, sdp: str, sdp_type: str, need: set[str]) -> RTCSessionDescription:
        pc = peer.pc
        self.peers.append(peer)

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                await self.close(peer)

        try:
            await answer_offer(pc, sdp, sdp_type, frozenset(need), error=BadMediaOffer)
        except BaseException:
            await self.close(peer)
            raise
        log.info("operator %s %s session %s", peer.operator, "watches" if peer.kind == "watch" else "drives",
                 peer.session_id)
        return pc.localDescription

    async def close(self, peer: MediaPeer) -> None:
        if peer.closed:
            return
        peer.closed = True
        with contextlib.suppress(ValueError):
            self.peers.remove(peer)
        for task in peer.tasks:
            task.cancel()
        for track in peer.tracks:
            track.stop()
        if peer.voice is not None:
            peer.voice.end()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(peer.pc.close(), 5.0)
        if peer.tasks:
            await asyncio.wait(peer.tasks, timeout=5.0)

    def close_soon(self, peers: list[MediaPeer]) -> None:
        """Close ``peers`` from synchronous code (desk and session-manager callbacks)."""
        for peer in peers:
            task = asyncio.ensure_future(self.close(peer))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def close_operator(self, operator: str) -> None:
        """Everything ``operator`` has open (they signed out)."""
        for peer in [p for p in self.peers if p.operator == operator]:
            await self.close(peer)

    async def close_all(self) -> None:
        for peer in list(self.peers):
            await self.close(peer)
        if self._closing:
            await asyncio.wait(list(self._closing), timeout=5.0)

    def _released(self, session_id: str, operator: str) -> None:
        self.close_soon(self.find("drive", session_id, operator))

    def _session_ended(self, session: Session) -> None:
        self.close_soon([p for p in self.peers if p.session_id == session.id])

    def describe(self, session_id: str) -> dict[str, Any]:
        """Who watches and who drives ``session_id`` (for the panel)."""
        drive = self.find("drive", session_id)
        return {
            "watchers": sorted({p.operator for p in self.find("watch", session_id)}),
            "voice": any(p.voice is not None for p in drive),
            "camera": any(p.camera for p in drive),
        }
