"""Peer connections: configuration, codec choice and inbound media draining."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
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


class UnusableOffer(ValueError):
    """A browser's SDP offer that cannot be applied or answered; the message says why (HTTP 400)."""


async def answer_offer(
    pc: RTCPeerConnection,
    sdp: str,
    sdp_type: str,
    need: frozenset[str] = frozenset({"audio", "video"}),
    error: type[UnusableOffer] = UnusableOffer,
) -> None:
    """Apply the remote offer to ``pc`` and set its answer as the local description. The offer
    must receive every kind in ``need``. Anything wrong with it raises ``error`` (the caller's
    subclass), never aiortc's own exceptions. The tracks and codec preferences must already be
    on ``pc``: aiortc fixes an answer's codecs while it applies the offer."""
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=sdp_type))
    except Exception as exc:  # aiortc raises ValueError and friends for bad SDP
        raise error(f"invalid SDP offer: {exc}") from exc
    matched = {t.kind for t in pc.getTransceivers() if t.mid is not None}
    if not need <= matched:
        raise error(f"the offer must receive {' and '.join(sorted(need))}")
    try:
        await pc.setLocalDescription(await pc.createAnswer())
    except Exception as exc:
        # An offer aiortc parsed but cannot answer: a media section with no direction, a BUNDLE
        # group that leaves a section without a transport (AttributeError inside aiortc)...
        raise error(f"cannot answer this SDP offer: {exc}") from exc


async def close_peer(pc: RTCPeerConnection) -> None:
    """Close ``pc`` without raising. A peer left half set up by an offer that failed midway can
    make aiortc's own ``close`` raise; the caller is cleaning up and must go on (a counter to
    put back, an error to answer), so that is logged, not raised."""
    try:
        await pc.close()
    except Exception:
        log.warning("closing a half-set-up peer connection failed", exc_info=True)


async def drain(track: MediaStreamTrack) -> None:
    """Consume an inbound track nobody listens to, so aiortc's receive queue cannot grow."""
    with contextlib.suppress(MediaStreamError, asyncio.CancelledError):
        while True:
            await track.recv()
