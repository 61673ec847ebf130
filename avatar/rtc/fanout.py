"""One stage, any number of viewers: render once, encode once per codec, send the same packets.

aiortc's ``RTCRtpSender`` skips its own encoder when a track's ``recv()`` returns an already
encoded ``av.Packet`` (it only packetizes it with ``Encoder.pack``). So each stage variant has
one *feed*: a source track that renders the stage once per frame, and one encoder per codec in
use; every encoded packet goes, as the same object, to each viewer's ``FanoutTrack``.

Keyframes: a sender's own keyframe handling (PLI/FIR from the receiver) only applies to frames
it encodes itself, so each viewer's video sender is hooked (``hook_keyframe_requests``) to ask
the shared encoder for a keyframe instead. A viewer that joins late, or falls so far behind
that its queue overflows, asks for one too and skips packets until it arrives (a decoder
cannot start on a delta frame).

The overlay variant carries true alpha through a codec that has none: ``pack_colour_alpha``
stacks the colour (top) and the alpha matte as grey (bottom) in one frame, with a short gap
between them (``OVERLAY_GAP``) so the codec's deblocking filter cannot carry one half into the
other; the overlay page composites them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import av
import cv2
import numpy as np
from aiortc import RTCDataChannel, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.sdp import SessionDescription

from avatar.clock import AUDIO_RATE, AUDIO_TIME_BASE, VIDEO_TIME_BASE
from avatar.config import IceServer
from avatar.rtc.peer import (
    UnusableOffer,
    answer_offer,
    close_peer,
    drain,
    make_peer_connection,
    prefer_video_codec,
)
from avatar.rtc.tracks import StageAudioTrack, StageVideoTrack
from avatar.stage import Stage

log = logging.getLogger(__name__)

#: Video variants a viewer may ask for: the picture, or colour + alpha stacked (the overlay).
VARIANTS = ("main", "overlay")
#: Encoded frames a viewer may have waiting before it is reset to the next keyframe (about 1/3 s
#: of video): a viewer that cannot keep up skips ahead instead of drifting behind the voice.
MAX_QUEUED = 8
#: Audio packets (20 ms) a viewer may have waiting; beyond that the oldest is dropped, one at a
#: time (a 20 ms gap the receiver conceals, where clearing the queue would cut 160 ms at once).
MAX_QUEUED_AUDIO = 16
VIDEO_BITRATE = {"main": 1_000_000, "overlay": 1_500_000}
#: Keyframes asked for (joins, PLI/FIR) come at most this often (seconds of stage time): with
#: hundreds of viewers on lossy networks, requests would otherwise make every frame a keyframe.
KEYFRAME_MIN_INTERVAL = 0.5
AUDIO_BITRATE = 64_000
#: Session events a viewer's page receives (captions for muted viewers, the speaking state).
VIEWER_EVENTS = ("caption", "state", "transcript")
#: Colour is spread this far (px) beyond the matte's edge so that codec and texture filtering
#: blend edge pixels with the figure's own colour, never with black (a dark fringe).
BLEED_PX = 9
#: Rows between the colour and the alpha halves of an overlay frame: the upper half of the gap
#: repeats the colour's last row, the lower half the matte's first, so a filter reaching across
#: either seam sees continuous content (web/overlay.js has the same constant).
OVERLAY_GAP = 16


# -- the overlay frame -------------------------------------------------------------------------
def pack_colour_alpha(rgba: np.ndarray) -> av.VideoFrame:
    """Pack a straight-alpha RGBA image ``(h, w, 4)`` into one yuv420p frame ``(2h + OVERLAY_GAP, w)``:
    colour in rows ``[0, h)``, alpha in rows ``[h + OVERLAY_GAP, 2h + OVERLAY_GAP)`` as limited-range
    grey (Y = 16 + 219 a; chroma neutral), so a browser's standard YUV->RGB conversion gives back
    ``a`` in every channel there. Colour is bled beyond the matte's edge (``BLEED_PX``). ``h`` must
    be a multiple of 4 and ``w`` even."""
    h, w = rgba.shape[:2]
    if h % 4 or w % 2:
        raise ValueError(f"the overlay needs a height divisible by 4 and an even width, not {w}x{h}")
    red, green, blue, alpha = cv2.split(np.ascontiguousarray(rgba))  # far cheaper than numpy slicing
    rgb = cv2.merge([red, green, blue])
    # The bleed colour: premultiplied colour spread by a box blur, divided by the spread coverage.
    # At a quarter of the resolution (a few ms a frame instead of 9 at 512x512): only its smooth
    # fall-off matters, and it is hidden wherever the matte is 0.
    premultiplied = cv2.multiply(rgb, cv2.merge([alpha, alpha, alpha]), scale=1 / 255)
    small = (max(1, w // 4), max(1, h // 4))
    k = 2 * (BLEED_PX // 4) + 1
    spread = cv2.blur(cv2.resize(premultiplied, small, interpolation=cv2.INTER_AREA).astype(np.float32), (k, k))
    coverage = cv2.blur(cv2.resize(alpha, small, interpolation=cv2.INTER_AREA).astype(np.float32), (k, k))
    bled_small = np.clip(spread * (255.0 / np.maximum(coverage, 0.5))[..., None], 0, 255).astype(np.uint8)
    bled = cv2.resize(bled_small, (w, h), interpolation=cv2.INTER_LINEAR)
    weight = alpha.astype(np.float32) * (1.0 / 255.0)
    colour = cv2.blendLinear(rgb, bled, weight, 1.0 - weight)  # the figure's colour, bled beyond it
    top = cv2.cvtColor(colour, cv2.COLOR_RGB2YUV_I420)  # (3h/2, w): Y, then U, then V
    alpha_y = cv2.convertScaleAbs(alpha, alpha=219 / 255, beta=16)
    half = OVERLAY_GAP // 2
    luma = np.vstack([top[:h], np.repeat(top[h - 1 : h], half, 0), np.repeat(alpha_y[:1], half, 0), alpha_y])
    planes = [luma]
    q = h // 4  # rows of one chroma plane of an (h, w) image, stored w wide
    for plane in (top[h : h + q], top[h + q : h + 2 * q]):
        chroma = plane.reshape(h // 2, w // 2)
        gap = [np.repeat(chroma[-1:], half // 2, 0), np.full((half // 2, w // 2), 128, np.uint8)]
        below = np.full((h // 2, w // 2), 128, np.uint8)  # neutral chroma under the matte
        planes.append(np.vstack([chroma, *gap, below]).reshape(-1, w))
    packed = np.vstack(planes)
    return av.VideoFrame.from_ndarray(packed, format="yuv420p")


class OverlayVideoTrack(StageVideoTrack):
    """The stage as colour + alpha stacked (see ``pack_colour_alpha``), at the stage's rate."""

    def _render(self, t: float) -> av.VideoFrame:
        return pack_colour_alpha(self.stage.render_rgba(t))


# -- encoders --------------------------------------------------------------------------------------
def _video_codec(codec: str, width: int, height: int, fps: int, bitrate: int) -> av.VideoCodecContext:
    """A real-time encoder with aiortc's own settings for the codec (so browsers treat the stream
    exactly as one aiortc encoded), except that keyframes come only when asked for."""
    if codec == "VP8":
        ctx = av.CodecContext.create("libvpx", "w")
        ctx.options = {
            "bufsize": str(bitrate),
            "cpu-used": "-6",
            "deadline": "realtime",
            "lag-in-frames": "0",
            "minrate": str(bitrate),
            "maxrate": str(bitrate),
            "noise-sensitivity": "4",
            "overshoot-pct": "15",
            "partitions": "0",
            "static-thresh": "1",
            "undershoot-pct": "100",
        }
        ctx.gop_size = 3000
        ctx.qmin = 2
        ctx.qmax = 56
    elif codec == "H264":
        ctx = av.CodecContext.create("libx264", "w")
        ctx.options = {"level": "31", "tune": "zerolatency"}
        ctx.profile = "Baseline"
    else:
        raise ValueError(f"unsupported video codec {codec!r}")
    assert isinstance(ctx, av.VideoCodecContext)
    ctx.width = width
    ctx.height = height
    ctx.pix_fmt = "yuv420p"
    ctx.bit_rate = bitrate
    ctx.time_base = VIDEO_TIME_BASE
    ctx.framerate = Fraction(fps, 1)
    ctx.thread_count = 1  # one encode per frame for every viewer: one core is plenty
    return ctx


class _VideoEncoder:
    """One codec's encoder on a feed: frames in, packets out, keyframe on request."""

    def __init__(self, codec: str, fps: int, bitrate: int) -> None:
        self.codec = codec
        self.fps = fps
        self.bitrate = bitrate
        self._ctx: av.VideoCodecContext | None = None
        self.keyframe_wanted = True  # the first frame is a keyframe anyway
        self._last_keyframe: int | None = None  # pts of the latest keyframe (90 kHz)
        self.frames_encoded = 0
        self.keyframes = 0

    def encode(self, frame: av.VideoFrame) -> list[av.Packet]:
        """Blocking (call from a worker thread). A wanted keyframe waits until
        ``KEYFRAME_MIN_INTERVAL`` has passed since the last one."""
        if self._ctx is None or self._ctx.width != frame.width or self._ctx.height != frame.height:
            self._ctx = _video_codec(self.codec, frame.width, frame.height, self.fps, self.bitrate)
            self.keyframe_wanted = True
            self._last_keyframe = None
        pts = frame.pts if frame.pts is not None else 0
        gap = KEYFRAME_MIN_INTERVAL / VIDEO_TIME_BASE
        force = self.keyframe_wanted and (self._last_keyframe is None or pts - self._last_keyframe >= gap)
        if force:
            self.keyframe_wanted = False
        frame.pict_type = av.video.frame.PictureType.I if force else av.video.frame.PictureType.NONE
        packets = list(self._ctx.encode(frame))
        for packet in packets:
            # One frame in, one packet out (no lookahead): stamp it with the frame's stage time.
            packet.pts = frame.pts
            packet.time_base = VIDEO_TIME_BASE
            if packet.is_keyframe:
                self.keyframes += 1
                self._last_keyframe = pts
        self.frames_encoded += 1
        return packets


class _OpusEncoder:
    """Opus at 48 kHz stereo (what WebRTC signals), 20 ms per packet, from the stage's mono frames."""

    codec = "opus"

    def __init__(self) -> None:
        ctx = av.CodecContext.create("libopus", "w")
        assert isinstance(ctx, av.AudioCodecContext)
        ctx.sample_rate = AUDIO_RATE
        ctx.layout = "stereo"
        ctx.format = "s16"
        ctx.bit_rate = AUDIO_BITRATE
        ctx.time_base = AUDIO_TIME_BASE
        ctx.options = {"application": "audio"}
        self._ctx = ctx
        self.keyframe_wanted = False
        self.frames_encoded = 0

    def encode(self, frame: av.AudioFrame) -> list[av.Packet]:
        mono = frame.to_ndarray().reshape(-1)
        stereo = np.repeat(mono, 2).reshape(1, -1)  # interleaved L R
        out = av.AudioFrame.from_ndarray(stereo, format="s16", layout="stereo")
        out.sample_rate = AUDIO_RATE
        out.pts = frame.pts
        out.time_base = AUDIO_TIME_BASE
        packets = list(self._ctx.encode(out))
        for packet in packets:
            packet.time_base = AUDIO_TIME_BASE
        self.frames_encoded += 1
        return packets


# -- viewers' tracks ----------------------------------------------------------------------------------
class FanoutTrack(MediaStreamTrack):
    """One viewer's track: the shared encoder's packets, as they come. ``recv`` returns
    ``av.Packet``s, which aiortc sends without encoding again."""

    def __init__(self, kind: str, feed: Feed) -> None:
        super().__init__()
        self.kind = kind
        self.feed = feed
        self.codec: str | None = None
        self._queue: deque[av.Packet] = deque()
        self._arrived = asyncio.Event()
        self._need_keyframe = kind == "video"
        self.packets_delivered = 0
        self.resets = 0  # queue overflows (the viewer could not keep up)

    def bind(self, codec: str) -> None:
        """Start receiving ``codec`` packets (once the viewer's codec is negotiated)."""
        self.codec = codec
        self.feed.subscribe(self)

    def deliver(self, packet: av.Packet) -> None:
        if self._need_keyframe:
            if not packet.is_keyframe:
                return
            self._need_keyframe = False
        if self.kind == "audio":
            if len(self._queue) >= MAX_QUEUED_AUDIO:
                self._queue.popleft()
                self.resets += 1
        elif len(self._queue) >= MAX_QUEUED:
            self._queue.clear()
            self.resets += 1
            if not packet.is_keyframe:
                self._need_keyframe = True
                self.request_keyframe()
                return
        self._queue.append(packet)
        self._arrived.set()

    def request_keyframe(self) -> None:
        if self.codec is not None:
            self.feed.request_keyframe(self.codec)

    async def recv(self) -> av.Packet:
        while not self._queue:
            if self.readyState != "live":
                raise MediaStreamError
            self._arrived.clear()
            await self._arrived.wait()
        self.packets_delivered += 1
        return self._queue.popleft()

    def stop(self) -> None:
        if self.readyState == "live":
            super().stop()
            self.feed.unsubscribe(self)
            self._arrived.set()  # a recv() waiting wakes and raises MediaStreamError


class Feed:
    """One source track read once per frame, encoded once per codec in use, fanned out to the
    subscribed tracks. Runs while it has subscribers; ``close`` stops it for good."""

    def __init__(self, make_source: Callable[[], MediaStreamTrack], make_encoder: Callable[[str], Any]) -> None:
        self._make_source = make_source
        self._make_encoder = make_encoder
        self.encoders: dict[str, Any] = {}
        self.subscribers: dict[str, set[FanoutTrack]] = {}
        self._task: asyncio.Task[None] | None = None
        self._stopping: set[asyncio.Task[None]] = set()
        self.frames_read = 0
        self.frames_sent = 0  # frames encoded and handed to every subscriber
        self._sent = asyncio.Event()
        self._closed = False

    def subscribe(self, track: FanoutTrack) -> None:
        if self._closed:
            track.stop()
            return
        codec = track.codec
        assert codec is not None
        if codec not in self.encoders:
            self.encoders[codec] = self._make_encoder(codec)
        self.subscribers.setdefault(codec, set()).add(track)
        self.request_keyframe(codec)  # the late joiner's decoder starts on a keyframe
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="fanout-feed")

    def unsubscribe(self, track: FanoutTrack) -> None:
        subs = self.subscribers.get(track.codec or "")
        if subs is not None:
            subs.discard(track)
        if not any(self.subscribers.values()) and self._task is not None:
            self._task.cancel()  # nobody watches: stop rendering (awaited in close)
            self._stopping.add(self._task)
            self._task.add_done_callback(self._stopping.discard)
            self._task = None

    def request_keyframe(self, codec: str) -> None:
        encoder = self.encoders.get(codec)
        if encoder is not None:
            encoder.keyframe_wanted = True

    async def wait_sent(self, count: int) -> None:
        """Return once ``frames_sent`` reaches ``count`` (tests and benchmarks pace on it)."""
        while self.frames_sent < count:
            self._sent.clear()
            await self._sent.wait()

    def subscriber_count(self) -> int:
        return sum(len(s) for s in self.subscribers.values())

    async def _run(self) -> None:
        source = self._make_source()
        loop = asyncio.get_running_loop()
        # The next frame is rendered while this one is encoded: on a busy machine the thread hops
        # of a strictly serial render -> encode -> send cost the stage frames. Two frames at most
        # wait; beyond that the source falls behind the clock and skips ahead by itself.
        ready: asyncio.Queue[Any] = asyncio.Queue(maxsize=2)

        async def read() -> None:
            try:
                while True:
                    await ready.put(await source.recv())
            except MediaStreamError:
                await ready.put(None)

        reader = loop.create_task(read(), name="fanout-read")
        try:
            while True:
                frame = await ready.get()
                if frame is None:
                    break
                self.frames_read += 1
                codecs = [c for c, subs in self.subscribers.items() if subs]
                encoders = [self.encoders[c] for c in codecs]
                # Every codec's encode in one worker call: the event loop stays free for packets.
                results = await loop.run_in_executor(None, _encode_all, encoders, frame)
                for codec, packets in zip(codecs, results, strict=True):
                    for track in list(self.subscribers.get(codec, ())):
                        for packet in packets:
                            track.deliver(packet)
                self.frames_sent += 1
                self._sent.set()
        except Exception:
            log.exception("a fan-out feed failed; its viewers get no more media")
            raise
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, MediaStreamError):
                await reader
            source.stop()

    async def close(self) -> None:
        self._closed = True
        for subs in self.subscribers.values():
            for track in list(subs):
                track.stop()
        tasks = ([self._task] if self._task is not None else []) + list(self._stopping)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def _encode_all(encoders: list[Any], frame: Any) -> list[list[av.Packet]]:
    return [encoder.encode(frame) for encoder in encoders]


def hook_keyframe_requests(sender: RTCRtpSender, track: FanoutTrack) -> None:
    """Route the viewer's keyframe requests (RTCP PLI/FIR) to the shared encoder. aiortc handles
    them in ``RTCRtpSender._send_keyframe``, which only flags its own encoder (unused for
    packets); there is no public hook, so the instance's method is replaced."""
    setattr(sender, "_send_keyframe", track.request_keyframe)  # noqa: B010 (no public hook)


def negotiated_codecs(sdp: str) -> dict[str, str]:
    """The codec each media kind will be sent with, from an answer: ``{"video": "VP8", ...}``."""
    out: dict[str, str] = {}
    for media in SessionDescription.parse(sdp).media:
        if media.rtp.codecs and media.kind not in out:
            out[media.kind] = media.rtp.codecs[0].name
    return out


# -- one stage's viewers ---------------------------------------------------------------------------------
class ViewerLimit(Exception):
    """The stage has its maximum number of viewers."""


class BadViewerOffer(UnusableOffer):
    """The viewer's SDP offer could not be used."""


@dataclass
class Viewer:
    id: str
    variant: str
    pc: RTCPeerConnection
    audio: FanoutTrack
    video: FanoutTrack
    channel: RTCDataChannel | None = None
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)


class StageFanout:
    """The viewers of one stage and the shared feeds they watch: one audio feed, one video feed
    per variant in use (``VARIANTS``). Events (captions, state) are serialised once and sent to
    every viewer's ``events`` data channel."""

    def __init__(
        self,
        stage: Stage,
        ice_servers: list[IceServer],
        video_codec: str = "VP8",
        render_pool: Executor | None = None,
        max_viewers: int = 200,
    ) -> None:
        self.stage = stage
        self.ice_servers = ice_servers
        self.video_codec = video_codec
        self.render_pool = render_pool
        self.max_viewers = max_viewers
        self.viewers: dict[str, Viewer] = {}
        self._pending = 0
        self.audio = Feed(lambda: StageAudioTrack(stage), lambda codec: _OpusEncoder())
        self.video: dict[str, Feed] = {
            "main": self._video_feed(lambda: StageVideoTrack(stage, render_pool), "main"),
            "overlay": self._video_feed(lambda: OverlayVideoTrack(stage, render_pool), "overlay"),
        }
        self.closed = False

    def _video_feed(self, make_source: Callable[[], MediaStreamTrack], variant: str) -> Feed:
        fps, bitrate = self.stage.fps, VIDEO_BITRATE[variant]
        return Feed(make_source, lambda codec: _VideoEncoder(codec, fps, bitrate))

    def viewer_count(self) -> int:
        return len(self.viewers)

    async def add_viewer(self, sdp: str, sdp_type: str, variant: str = "main") -> tuple[str, RTCSessionDescription]:
        """Answer a receive-only viewer's offer. Raises ``ViewerLimit`` or ``BadViewerOffer``."""
        if variant not in VARIANTS:
            raise ValueError(f"'variant' must be one of {', '.join(VARIANTS)}")
        if self.closed:
            raise BadViewerOffer("the stage has ended")
        if len(self.viewers) + self._pending >= self.max_viewers:
            raise ViewerLimit(f"the stage has its maximum of {self.max_viewers} viewers")
        self._pending += 1
        pc = make_peer_connection(self.ice_servers)
        audio = FanoutTrack("audio", self.audio)
        video = FanoutTrack("video", self.video[variant])
        viewer = Viewer(uuid.uuid4().hex[:12], variant, pc, audio, video)
        try:
            self._wire(viewer)
            pc.addTrack(audio)
            pc.addTrack(video)
            prefer_video_codec(pc, self.video_codec)
            await answer_offer(pc, sdp, sdp_type, error=BadViewerOffer)
            codecs = negotiated_codecs(pc.localDescription.sdp)
            if codecs.get("video") not in ("VP8", "H264") or codecs.get("audio") != "opus":
                raise BadViewerOffer("the offer must accept VP8 or H264 video and Opus audio")
            for transceiver in pc.getTransceivers():
                if transceiver.sender.track is video:
                    hook_keyframe_requests(transceiver.sender, video)
            if self.closed:
                raise BadViewerOffer("the stage has ended")
        except BaseException:
            self._pending -= 1
            audio.stop()
            video.stop()
            await close_peer(pc)
            raise
        self._pending -= 1
        audio.bind("opus")
        video.bind(codecs["video"])
        self.viewers[viewer.id] = viewer
        log.info("stage viewer %s joined (%s, %s); %d watching", viewer.id, variant, codecs["video"], len(self.viewers))
        return viewer.id, pc.localDescription

    def _wire(self, viewer: Viewer) -> None:
        pc = viewer.pc

        @pc.on("datachannel")
        def on_datachannel(channel: RTCDataChannel) -> None:
            if channel.label == "events":
                viewer.channel = channel

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            # A viewer sends nothing we use; anything it sends is consumed so nothing queues up.
            task = asyncio.get_running_loop().create_task(drain(track), name=f"viewer-drain:{viewer.id}")
            viewer.tasks.add(task)
            task.add_done_callback(viewer.tasks.discard)

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                await self.remove_viewer(viewer.id)

    def publish(self, message: dict[str, Any]) -> None:
        """Send a session event to every viewer (a session sink; serialised once)."""
        if message.get("type") not in VIEWER_EVENTS:
            return
        speaker = message.get("speaker")
        if speaker is not None:
            message = {**message, "speaker": "avatar"}  # who drives the stage is not the viewers' business
        text = json.dumps(message, ensure_ascii=False)
        for viewer in list(self.viewers.values()):
            channel = viewer.channel
            if channel is not None and channel.readyState == "open":
                channel.send(text)

    async def remove_viewer(self, viewer_id: str) -> bool:
        viewer = self.viewers.pop(viewer_id, None)
        if viewer is None:
            return False
        viewer.audio.stop()
        viewer.video.stop()
        for task in list(viewer.tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(viewer.pc.close(), 5.0)
        log.info("stage viewer %s left; %d watching", viewer_id, len(self.viewers))
        return True

    def stats(self) -> dict[str, Any]:
        """Counters for tests and benchmarks: frames read and encoded per feed and codec."""
        feeds = {"audio": self.audio, **self.video}
        return {
            name: {
                "frames_read": feed.frames_read,
                "frames_sent": feed.frames_sent,
                "subscribers": feed.subscriber_count(),
                "encoders": {
                    codec: {"frames_encoded": enc.frames_encoded, "keyframes": getattr(enc, "keyframes", 0)}
                    for codec, enc in feed.encoders.items()
                },
            }
            for name, feed in feeds.items()
        }

    async def close(self) -> None:
        """Disconnect every viewer and stop the feeds."""
        self.closed = True
        await asyncio.gather(*(self.remove_viewer(v) for v in list(self.viewers)), return_exceptions=True)
        await self.audio.close()
        for feed in self.video.values():
            await feed.close()
