"""An in-process WebRTC customer (aiortc) for server tests: offers to receive the avatar's
audio and video, opens the ``events`` channel, and records what arrives."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack


@dataclass
class Received:
    video_pts: list[int] = field(default_factory=list)
    video_times: list[float] = field(default_factory=list)
    video_size: tuple[int, int] | None = None
    audio_pts: list[int] = field(default_factory=list)
    audio_rms: list[float] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)


class RtcCustomer:
    def __init__(self) -> None:
        self.pc = RTCPeerConnection()
        self.got = Received()
        self.channel = self.pc.createDataChannel("events")
        self.channel_open = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.pc.addTransceiver("audio", direction="recvonly")
        self.pc.addTransceiver("video", direction="recvonly")

        @self.channel.on("open")
        def _open() -> None:
            self.channel_open.set()

        @self.channel.on("message")
        def _message(message: str) -> None:
            self.got.events.append(json.loads(message))

        @self.pc.on("track")
        def _track(track: MediaStreamTrack) -> None:
            self._tasks.append(asyncio.ensure_future(self._consume(track)))

    async def offer(self) -> dict[str, str]:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return {"sdp": self.pc.localDescription.sdp, "type": self.pc.localDescription.type}

    async def accept(self, answer: dict[str, Any]) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))

    async def _consume(self, track: MediaStreamTrack) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(MediaStreamError, asyncio.CancelledError):
            while True:
                frame = await track.recv()
                if track.kind == "video":
                    self.got.video_pts.append(frame.pts)
                    self.got.video_times.append(loop.time())
                    self.got.video_size = (frame.width, frame.height)
                else:
                    samples = frame.to_ndarray().astype(np.float64)
                    self.got.audio_pts.append(frame.pts)
                    self.got.audio_rms.append(float(np.sqrt(np.mean(samples**2))))

    def send(self, message: dict[str, Any]) -> None:
        self.channel.send(json.dumps(message))

    async def wait_for_event(self, predicate: Any, within: float = 20.0) -> dict[str, Any]:
        async def poll() -> dict[str, Any]:
            while True:
                for event in self.got.events:
                    if predicate(event):
                        return event
                await asyncio.sleep(0.02)

        return await asyncio.wait_for(poll(), within)

    async def close(self) -> None:
        await self.pc.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


def cut_network(pc: RTCPeerConnection) -> int:
    """Abort every UDP socket of ``pc``'s ICE transports at once: nothing more is sent or
    received, and nothing says goodbye (no DTLS close, no SCTP abort, no consent answers), as
    when a customer's network dies. Returns the sockets aborted. (aioice keeps its sockets in
    private attributes: a test tool only.)"""
    transports = {id(t.sender.transport.transport): t.sender.transport.transport for t in pc.getTransceivers()}
    if pc.sctp is not None:
        transports[id(pc.sctp.transport.transport)] = pc.sctp.transport.transport
    aborted = 0
    for ice in transports.values():
        for protocol in list(ice._connection._protocols):
            transport = getattr(protocol, "transport", None)
            if transport is not None and not transport.is_closing():
                transport.abort()
                aborted += 1
    return aborted
