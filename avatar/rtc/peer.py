"""Peer connections: configuration, codec choice and inbound media draining."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCRtpSender
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcconfiguration import RTCBundlePolicy

from avatar.config import IceServer

log = logging.getLogger(__name__)


def make_peer_connection(ice_servers: list[IceServer]) -> RTCPeerConnection:
    """A peer with max-bundle (aiortc drops a second audio m-line's media otherwise) and the
    configured ICE servers (none by default: an unreachable STUN server delays every answer)."""
    servers = [RTCIceServer(urls=s.urls, username=s.username, credential=s.credential) for s in ice_servers]
    return RTCPeerConnection(RTCConfiguration(iceServers=servers, bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))


def prefer_video_codec(pc: RTCPeerConnection, codec: str) -> None:
    """Put ``codec`` ("H264" or "VP8") first in every video transceiver's preferences."""
    caps = RTCRtpSender.getCapabilities("video")
    mime = f"video/{codec}".lower()
    preferred = [c for c in caps.codecs if c.mimeType.lower() == mime]
    others = [c for c in caps.codecs if c.mimeType.lower() != mime]
    if not preferred:
        return
    for transceiver in pc.getTransceivers():
        if transceiver.kind == "video":
            transceiver.setCodecPreferences(preferred + others)


async def drain(track: MediaStreamTrack) -> None:
    """Consume an inbound track nobody listens to, so aiortc's receive queue cannot grow."""
    with contextlib.suppress(MediaStreamError, asyncio.CancelledError):
        while True:
            await track.recv()
