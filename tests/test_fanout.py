"""The fan-out: one encode for N viewers, keyframes for late joiners and PLI, a viewer that cannot
keep up, aiortc's sender packing our packets without encoding, and the colour-over-alpha frame.
The source is a fake track the test feeds frame by frame (no clock, no sleeping)."""

from __future__ import annotations

import asyncio
import math
from fractions import Fraction
from types import SimpleNamespace
from typing import Any

import av
import numpy as np
import pytest
from aiortc import RTCRtpCodecParameters, RTCRtpSender
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtp import RTCP_PSFB_PLI, RtcpPsfbPacket

from avatar.rtc.fanout import (
    KEYFRAME_MIN_INTERVAL,
    MAX_QUEUED,
    MAX_QUEUED_AUDIO,
    OVERLAY_GAP,
    FanoutTrack,
    Feed,
    _OpusEncoder,
    _VideoEncoder,
    hook_keyframe_requests,
    negotiated_codecs,
    pack_colour_alpha,
)

VIDEO_TB = Fraction(1, 90_000)


class QueueSource(MediaStreamTrack):
    """A video source the test pushes frames into; ``None`` ends it."""

    kind = "video"

    def __init__(self, queue: asyncio.Queue[av.VideoFrame | None]) -> None:
        super().__init__()
        self.queue = queue

    async def recv(self) -> av.VideoFrame:
        frame = await self.queue.get()
        if frame is None:
            raise MediaStreamError
        return frame


def frame(index: int, size: int = 64) -> av.VideoFrame:
    # One picture moving a pixel a frame: like video, so the encoder places no keyframe of its own.
    image = np.roll(np.random.default_rng(7).integers(0, 255, (size, size, 3), dtype=np.uint8), index, axis=1)
    out = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
    out.pts = index * 3600
    out.time_base = VIDEO_TB
    return out


class Harness:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[av.VideoFrame | None] = asyncio.Queue()
        self.encoders: list[_VideoEncoder] = []
        self.sources = 0
        self.feed = Feed(self._source, self._encoder)
        self.index = 0
        self.received: dict[FanoutTrack, list[av.Packet]] = {}

    def _source(self) -> MediaStreamTrack:
        self.sources += 1
        return QueueSource(self.queue)

    def _encoder(self, codec: str) -> _VideoEncoder:
        encoder = _VideoEncoder(codec, 25, 300_000)
        self.encoders.append(encoder)
        return encoder

    def track(self, codec: str = "VP8") -> FanoutTrack:
        track = FanoutTrack("video", self.feed)
        track.bind(codec)
        return track

    async def push(self, n: int) -> None:
        """Feed ``n`` frames, one at a time: each is encoded and handed out before the next."""
        for _ in range(n):
            sent = self.feed.frames_sent
            await self.queue.put(frame(self.index))
            self.index += 1
            await asyncio.wait_for(self.feed.wait_sent(sent + 1), 10)
            self._collect()

    def reader(self, codec: str = "VP8") -> FanoutTrack:
        """A viewer that keeps up: ``push`` takes its packets after every frame into ``received``."""
        track = self.track(codec)
        self.received[track] = []
        return track

    def _collect(self) -> None:
        for track, packets in self.received.items():
            packets.extend(drain(track))


def drain(track: FanoutTrack) -> list[av.Packet]:
    out = []
    while track._queue:
        out.append(track._queue.popleft())
    return out


async def test_one_encode_for_many_viewers_same_packets() -> None:
    h = Harness()
    viewers = [h.track() for _ in range(20)]
    await h.push(6)
    assert h.sources == 1 and len(h.encoders) == 1
    assert h.encoders[0].frames_encoded == 6  # not 6 x 20
    got = [drain(v) for v in viewers]
    assert all(len(g) == 6 for g in got)
    # The very same packet objects go to every viewer, stamped with the frame's stage time.
    for i in range(6):
        assert all(g[i] is got[0][i] for g in got)
        assert got[0][i].pts == i * 3600 and got[0][i].time_base == VIDEO_TB
    assert got[0][0].is_keyframe and not any(p.is_keyframe for p in got[0][1:])
    await h.feed.close()
    assert all(v.readyState == "ended" for v in viewers)


async def test_late_joiner_gets_a_keyframe_first() -> None:
    h = Harness()
    early = h.reader()
    await h.push(15)  # 0.6 s: past the keyframe interval after the first frame's keyframe
    assert h.encoders[0].keyframes == 1
    late = h.reader()  # joining asks the shared encoder for a keyframe
    await h.push(3)
    packets = h.received[late]
    assert [p.pts for p in packets] == [15 * 3600, 16 * 3600, 17 * 3600] and packets[0].is_keyframe
    assert h.encoders[0].keyframes == 2
    assert len(h.received[early]) == 18
    # A request within KEYFRAME_MIN_INTERVAL of the last keyframe waits for the interval to pass;
    # the joiner receives nothing before its keyframe.
    later = h.reader()
    await h.push(12)  # frames 18..29; the keyframe at 15 (0.6 s) allows the next from 1.1 s on
    first_allowed = math.ceil((15 * 3600 + KEYFRAME_MIN_INTERVAL * 90_000) / 3600)
    packets = h.received[later]
    assert packets[0].is_keyframe and packets[0].pts == first_allowed * 3600
    assert len(packets) == 30 - first_allowed and h.encoders[0].keyframes == 3
    await h.feed.close()


async def test_codecs_encode_separately_and_stop_with_last_viewer() -> None:
    h = Harness()
    vp8, h264 = h.track("VP8"), h.track("H264")
    await h.push(3)
    assert sorted(e.codec for e in h.encoders) == ["H264", "VP8"]
    assert all(e.frames_encoded == 3 for e in h.encoders)
    assert len(drain(vp8)) == 3 and len(drain(h264)) == 3
    vp8.stop()
    h264.stop()
    assert h.feed._task is None  # nobody watches: the feed stops reading (and rendering)
    # A new viewer restarts it with a fresh source.
    again = h.reader("VP8")
    await h.push(12)  # the keyframe it asks for comes once KEYFRAME_MIN_INTERVAL has passed
    assert h.sources == 2 and h.received[again][0].is_keyframe
    await h.feed.close()


async def test_slow_viewer_skips_to_next_keyframe() -> None:
    h = Harness()
    slow, fast = h.track(), h.reader()
    await h.push(MAX_QUEUED)
    assert len(slow._queue) == MAX_QUEUED
    await h.push(1)  # the slow viewer's queue overflows: reset, and a keyframe is asked for
    assert slow.resets == 1 and len(slow._queue) == 0
    assert h.encoders[0].keyframe_wanted
    await h.push(6)  # frames 9..14; the keyframe comes at 0.5 s (frame 13)
    packets = drain(slow)
    assert packets[0].is_keyframe and [p.pts for p in packets] == [13 * 3600, 14 * 3600]
    assert len(h.received[fast]) == 15  # the fast viewer lost nothing
    await h.feed.close()


async def test_sender_packs_packets_and_routes_pli_to_shared_encoder() -> None:
    h = Harness()
    track = FanoutTrack("video", h.feed)
    transport: Any = SimpleNamespace(state="new")  # the sender only checks the state here
    sender = RTCRtpSender(track, transport)
    hook_keyframe_requests(sender, track)
    track.bind("VP8")
    await h.push(2)
    codec = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90_000, payloadType=96)
    encoded = await sender._next_encoded_frame(codec)
    assert encoded is not None and encoded.payloads and encoded.timestamp == 0
    encoded = await sender._next_encoded_frame(codec)
    assert encoded is not None and encoded.timestamp == 3600
    assert not h.encoders[0].keyframe_wanted
    await sender._handle_rtcp_packet(RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=1, media_ssrc=sender._ssrc))
    assert h.encoders[0].keyframe_wanted
    h.received[track] = []
    await h.push(12)  # frames 2..13: the keyframe comes once KEYFRAME_MIN_INTERVAL has passed
    assert [p.pts for p in h.received[track] if p.is_keyframe] == [13 * 3600]
    await h.feed.close()


async def test_stopped_track_recv_ends() -> None:
    h = Harness()
    track = h.track()
    waiter = asyncio.ensure_future(track.recv())
    await asyncio.sleep(0)
    track.stop()
    with pytest.raises(MediaStreamError):
        await waiter
    await h.feed.close()


def test_opus_encoder_one_packet_per_20ms() -> None:
    encoder = _OpusEncoder()
    packets = []
    for i in range(10):
        samples = (np.sin(np.arange(960) * 0.05 + i) * 8000).astype(np.int16).reshape(1, -1)
        f = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        f.sample_rate = 48_000
        f.pts = 96_000 + i * 960
        f.time_base = Fraction(1, 48_000)
        packets += encoder.encode(f)
    assert len(packets) >= 9
    steps = np.diff([p.pts for p in packets])
    assert set(steps.tolist()) == {960}
    decoder = av.CodecContext.create("opus", "r")
    decoded = [fr for p in packets for fr in decoder.decode(p)]
    assert decoded and decoded[-1].layout.name == "stereo"


def test_pack_colour_alpha_layout_and_edges() -> None:
    h = w = 64
    rgba = np.zeros((h, w, 4), dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    disc = np.clip(20.5 - np.hypot(yy - 32, xx - 32), 0, 1)  # an anti-aliased disc
    rgba[..., 0], rgba[..., 1], rgba[..., 2] = 200, 60, 40
    rgba[..., 3] = np.round(disc * 255).astype(np.uint8)
    packed = pack_colour_alpha(rgba)
    assert (packed.width, packed.height) == (w, 2 * h + OVERLAY_GAP)
    rgb = packed.to_ndarray(format="rgb24")  # limited-range BT.601, as a browser decodes it
    colour, matte = rgb[:h].astype(int), rgb[h + OVERLAY_GAP :].astype(int)
    # The gap continues each half: the colour's last row above, the matte's first row below.
    gap = rgb[h : h + OVERLAY_GAP].astype(int)
    assert np.abs(gap[: OVERLAY_GAP // 2] - colour[-1]).max() <= 3
    assert np.abs(gap[OVERLAY_GAP // 2 :] - matte[0]).max() <= 3
    # The lower half is the alpha as grey, within rounding.
    assert np.abs(matte[..., 1] - rgba[..., 3]).max() <= 3
    assert np.abs(matte[..., 0] - matte[..., 2]).max() <= 3
    # Inside the figure the colour is the figure's; on and just beyond the edge it is bled, not
    # black, so filtering at the edge cannot darken it.
    inside = rgba[..., 3] == 255
    assert np.abs(colour[inside] - [200, 60, 40]).max() <= 6
    ring = (np.hypot(yy - 32, xx - 32) > 20) & (np.hypot(yy - 32, xx - 32) < 25)
    assert colour[ring][:, 0].min() > 150
    with pytest.raises(ValueError):
        pack_colour_alpha(np.zeros((30, 64, 4), dtype=np.uint8))


def test_negotiated_codecs() -> None:
    sdp = (
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
        "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=rtpmap:111 opus/48000/2\r\n"
        "m=video 9 UDP/TLS/RTP/SAVPF 102 97\r\nc=IN IP4 0.0.0.0\r\na=rtpmap:102 H264/90000\r\n"
        "a=rtpmap:97 VP8/90000\r\n"
    )
    assert negotiated_codecs(sdp) == {"audio": "opus", "video": "H264"}


async def test_slow_audio_viewer_drops_oldest_packets_one_at_a_time() -> None:
    feed = Feed(lambda: QueueSource(asyncio.Queue()), lambda codec: _OpusEncoder())
    track = FanoutTrack("audio", feed)
    track.codec = "opus"  # not subscribed: packets are handed to it directly
    encoder = _OpusEncoder()
    packets = [p for i in range(MAX_QUEUED_AUDIO + 12) for p in encoder.encode(_audio(i))]
    for packet in packets:
        track.deliver(packet)
    kept = list(track._queue)
    assert len(kept) == MAX_QUEUED_AUDIO and kept == packets[-MAX_QUEUED_AUDIO:]
    assert track.resets == len(packets) - MAX_QUEUED_AUDIO


def _audio(i: int) -> av.AudioFrame:
    samples = (np.sin(np.arange(960) * 0.05 + i) * 8000).astype(np.int16).reshape(1, -1)
    f = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
    f.sample_rate = 48_000
    f.pts = i * 960
    f.time_base = Fraction(1, 48_000)
    return f
