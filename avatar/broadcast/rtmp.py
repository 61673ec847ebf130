"""RTMP out: a broadcast stage pushed to a streaming platform's ingest as H.264 + AAC in FLV.

``RtmpOutput`` renders the stage (``stage.render(t)``) and reads its voice
(``stage.read_audio``) paced by the stage's ``MediaClock``, like the WebRTC tracks: frame ``i``
is the face at clock time ``i / fps`` and the audio is every sample up to the next frame, so
the mouth and the voice stay on one timeline. Rendering, encoding and muxing run in the
output's own worker thread (a container is used by one thread at a time), never on the event
loop. PyAV's bundled FFmpeg has the RTMP protocol and the FLV muxer, libx264 and its native AAC
encoder.

When the connection fails (the ingest is down, restarts, refuses the stream key), the output
retries with exponential backoff (1 s doubling to 30 s) with fresh encoders, until it is
removed or its stage ends. ``describe()`` is what ``GET /api/stages/{id}/outputs`` shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from avatar.clock import AUDIO_RATE
from avatar.stage import Stage

log = logging.getLogger(__name__)

BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
#: Seconds the network may block opening or writing before the attempt counts as failed.
IO_TIMEOUT = 10.0
VIDEO_BITRATE = 1_500_000
AUDIO_BITRATE = 128_000
#: A keyframe every this many seconds (ingest servers ask for 2 to 4).
KEYFRAME_INTERVAL = 2.0


class BadOutputUrl(ValueError):
    """The URL cannot be pushed to (not rtmp:// or rtmps://, no host, no stream path)."""


def check_url(url: str) -> str:
    """Validate an ingest URL: ``rtmp://`` or ``rtmps://``, a host and an application/stream path."""
    if not isinstance(url, str) or not url.strip():
        raise BadOutputUrl("'url' must be a non-empty string")
    url = url.strip()
    if len(url) > 2048:
        raise BadOutputUrl("'url' is longer than 2048 characters")
    parts = urlsplit(url)
    if parts.scheme not in ("rtmp", "rtmps"):
        raise BadOutputUrl("'url' must start with rtmp:// or rtmps://")
    if not parts.hostname:
        raise BadOutputUrl("'url' has no host")
    try:
        parts.port  # noqa: B018 - urlsplit checks the port only when it is read
    except ValueError:
        raise BadOutputUrl("'url' has a bad port (it must be a number from 0 to 65535)") from None
    if any(c.isspace() for c in url):
        raise BadOutputUrl("'url' must not contain spaces")
    if len([p for p in parts.path.split("/") if p]) < 2:
        raise BadOutputUrl("'url' needs an application and a stream key: rtmp://host[:port]/app/key")
    return url


def redact_url(url: str) -> str:
    """The URL as shown in status and logs: the stream key (the secret part) elided."""
    parts = urlsplit(url)
    path = parts.path.rstrip("/")
    app, _, key = path.rpartition("/")
    shown_key = key[:3] + "…" if len(key) > 3 else "…"
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{app}/{shown_key}"


class RtmpOutput:
    """One push of a stage to one RTMP URL, reconnecting until closed.

    States: ``connecting`` (opening, or between a failure and the next attempt: see ``retry_in``),
    ``live`` (frames are being sent), ``stopped`` (removed, or the stage ended).
    """

    def __init__(
        self,
        stage: Stage,
        url: str,
        *,
        output_id: str | None = None,
        video_bitrate: int = VIDEO_BITRATE,
        audio_bitrate: int = AUDIO_BITRATE,
        backoff_first: float = BACKOFF_FIRST,
        backoff_max: float = BACKOFF_MAX,
    ) -> None:
        self.id = output_id or uuid.uuid4().hex[:12]
        self.stage = stage
        self.url = check_url(url)
        self.video_bitrate = video_bitrate
        self.audio_bitrate = audio_bitrate
        self.backoff_first = backoff_first
        self.backoff_max = backoff_max
        self.state = "connecting"
        self.created = time.time()
        self.connected_at: float | None = None  # wall clock of the current connection
        self.attempts = 0
        self.failures = 0
        self.last_error: str | None = None
        self.retry_in: float | None = None
        self.frames_sent = 0  # over all connections
        self.audio_seconds = 0.0
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"rtmp-{self.id}")

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self, spawn: Any = None) -> None:
        """Start pushing. ``spawn(coro, name)`` makes the task (a session's ``spawn``, so the
        output ends with its stage); plain ``asyncio.create_task`` when None."""
        if self._task is not None:
            return
        coro = self._run()
        self._task = spawn(coro, f"rtmp-{self.id}") if spawn is not None else asyncio.create_task(coro)

    async def close(self) -> None:
        self.state = "stopped"
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._executor.shutdown(wait=False)

    def describe(self) -> dict[str, Any]:
        return {
            "output_id": self.id,
            "url": redact_url(self.url),
            "state": self.state,
            "created": self.created,
            "connected_at": self.connected_at,
            "attempts": self.attempts,
            "failures": self.failures,
            "last_error": self.last_error,
            "retry_in": self.retry_in,
            "frames_sent": self.frames_sent,
            "audio_seconds": round(self.audio_seconds, 2),
        }

    # -- the push loop ----------------------------------------------------------------------------------
    async def _run(self) -> None:
        delay = self.backoff_first
        clock = self.stage.clock
        try:
            while True:
                self.state = "connecting"
                self.retry_in = None
                self.attempts += 1
                started = clock.time()
                try:
                    await self._push_once()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.failures += 1
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    log.warning("RTMP output %s to %s failed: %s", self.id, redact_url(self.url), self.last_error)
                if clock.time() - started > 2 * self.backoff_max:
                    delay = self.backoff_first  # it had been up a while: a fresh failure, not a flapping one
                self.state = "connecting"
                self.connected_at = None
                self.retry_in = delay
                await clock.sleep_until(clock.time() + delay)
                delay = min(delay * 2, self.backoff_max)
        finally:
            self.state = "stopped"
            self.retry_in = None
            self.connected_at = None

    async def _push_once(self) -> None:
        """One connection: open, then send frames paced by the stage clock until something fails."""
        loop = asyncio.get_running_loop()
        stage = self.stage
        clock = stage.clock
        fps = stage.fps
        encoder = _Encoder(self.url, fps, self.video_bitrate, self.audio_bitrate)
        try:
            await loop.run_in_executor(self._executor, encoder.open)
            first = math.ceil(clock.time() * fps)
            index = first
            audio_pos = round(first * AUDIO_RATE / fps)
            while True:
                t = index / fps
                await clock.sleep_until(t)
                behind = clock.time() - t
                if behind > 2.0 / fps:
                    index = math.floor(clock.time() * fps)  # skip to the present; the audio stays whole
                    t = index / fps
                audio_end = round((index + 1) * AUDIO_RATE / fps)
                samples = stage.read_audio(audio_pos, max(0, audio_end - audio_pos))
                await loop.run_in_executor(
                    self._executor, encoder.send, stage, t, index - first, samples, audio_pos - round(first * AUDIO_RATE / fps)
                )
                if self.state != "live":
                    self.state = "live"
                    self.connected_at = time.time()
                    self.last_error = None
                    log.info("RTMP output %s is live to %s", self.id, redact_url(self.url))
                audio_pos = audio_end
                self.audio_seconds += len(samples) / AUDIO_RATE
                self.frames_sent += 1
                index += 1
        finally:
            # The worker thread may be mid-write: closing is queued behind it, not awaited when
            # the task is being cancelled (the thread finishes on its own).
            closing = loop.run_in_executor(self._executor, encoder.close)
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.shield(closing)


class _Encoder:
    """The FLV container and its two encoders for one connection. Used from one worker thread."""

    def __init__(self, url: str, fps: int, video_bitrate: int, audio_bitrate: int) -> None:
        self.url = url
        self.fps = fps
        self.video_bitrate = video_bitrate
        self.audio_bitrate = audio_bitrate
        self.container: Any = None
        self.video: Any = None
        self.audio: Any = None

    def open(self) -> None:
        import av

        container = av.open(self.url, "w", format="flv", timeout=IO_TIMEOUT)
        try:
            video = container.add_stream("libx264", rate=self.fps)
            video.pix_fmt = "yuv420p"
            video.bit_rate = self.video_bitrate
            video.gop_size = max(1, round(KEYFRAME_INTERVAL * self.fps))
            video.options = {"preset": "veryfast", "tune": "zerolatency", "bf": "0"}
            video.codec_context.time_base = Fraction(1, self.fps)
            audio = container.add_stream("aac", rate=AUDIO_RATE)
            audio.layout = "mono"
            audio.bit_rate = self.audio_bitrate
        except BaseException:
            container.close()
            raise
        self.container, self.video, self.audio = container, video, audio

    def send(self, stage: Stage, t: float, frame_index: int, samples: np.ndarray, audio_pts: int) -> None:
        """Render and encode the frame for clock time ``t`` and the audio that goes with it, and
        write both. Video pts count frames, audio pts samples, both from this connection's start."""
        import av

        from avatar.rtc.tracks import rgb_to_video_frame

        rgb = stage.render(t)
        if self.video.width != rgb.shape[1] or self.video.height != rgb.shape[0]:
            if frame_index > 0:
                raise RuntimeError("the stage's frame size changed mid-stream")
            self.video.width, self.video.height = rgb.shape[1], rgb.shape[0]
        frame = rgb_to_video_frame(rgb)
        frame.pts = frame_index
        frame.time_base = Fraction(1, self.fps)
        packets = list(self.video.encode(frame))
        if len(samples):
            sound = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
            sound.sample_rate = AUDIO_RATE
            sound.pts = audio_pts
            sound.time_base = Fraction(1, AUDIO_RATE)
            packets.extend(self.audio.encode(sound))
        for packet in packets:
            self.container.mux(packet)

    def close(self) -> None:
        container = self.container
        self.container = None
        if container is None:
            return
        try:
            for stream in (self.video, self.audio):
                for packet in stream.encode(None):
                    container.mux(packet)
        except Exception:
            pass  # the connection is gone: nothing more can be written
        finally:
            with contextlib.suppress(Exception):
                container.close()
